"""``python -m sparkdl.cli ...`` (scripts/caltech256_demo.sh) = the ``sparkdl`` console script."""
import sys

from sparkdl.cli import main

sys.exit(main())
