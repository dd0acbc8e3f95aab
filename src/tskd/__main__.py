"""``python -m tskd``: the ``tskd`` command (``tskd.apps.cli``) without the console script."""

import sys

from tskd.apps.cli import main

if __name__ == "__main__":
    sys.exit(main())
