"""``python -m camkit`` works like the ``camkit`` command."""

import sys

from camkit.cli import run

sys.exit(run())
