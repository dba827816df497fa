"""`python -m opspush`: the same as the `opspush` command."""

import sys

from .commands.cli import main

sys.exit(main())
