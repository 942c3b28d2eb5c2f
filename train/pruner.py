"""Both stages of pruner training in one command: the command line of
:mod:`pacegeo.training.pruner`; ``python train/pruner.py --help`` lists the options."""

import sys

from pacegeo.training.pruner import main

if __name__ == "__main__":
    sys.exit(main())
