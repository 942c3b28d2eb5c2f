import sys

from pacegeo.cli import main

sys.exit(main())
