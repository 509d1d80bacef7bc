"""`python -m study ...`"""

import sys

from study.cli import main

if __name__ == "__main__":  # a spawned child process (the trial pages' renderer) imports this module too
    sys.exit(main())
