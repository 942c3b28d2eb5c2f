"""Stage 2 of pruner training (camera/depth/point-map fine-tuning): the command line of
:mod:`pacegeo.training.finetune`; ``python train/finetune.py --help`` lists the options."""

import sys

from pacegeo.training.finetune import main

if __name__ == "__main__":
    sys.exit(main())
