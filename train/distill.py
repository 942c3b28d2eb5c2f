"""Stage 1 of pruner training (attention distillation): the command line of
:mod:`pacegeo.training.distill`; ``python train/distill.py --help`` lists the options."""

import sys

from pacegeo.training.distill import main

if __name__ == "__main__":
    sys.exit(main())
