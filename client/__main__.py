"""``python -m client``: see client/cli.py."""

import sys

from .cli import main

sys.exit(main(standalone=True))
