"""``python -m hooksteer ...``: the same command line as the ``hooksteer`` script (:func:`hooksteer.cli.main`)."""

import sys

from hooksteer.cli import main

if __name__ == "__main__":
    sys.exit(main())
