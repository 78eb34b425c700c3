"""``python -m fastps``: the ``fastps`` command (fastps.cli), for when the script is not on PATH."""

import sys

from fastps.cli import main

if __name__ == "__main__":
    sys.exit(main())
