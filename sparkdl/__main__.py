"""``python -m sparkdl ...`` = the ``sparkdl`` console script."""
import sys

from sparkdl.cli import main

if __name__ == "__main__":
    sys.exit(main())
