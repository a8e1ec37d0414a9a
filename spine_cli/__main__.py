"""`python -m spine_cli`: the same as `./spine`."""

import sys

from spine_cli.main import main

if __name__ == "__main__":
    sys.exit(main())
