"""``python -m camkit`` works like the ``camkit`` command."""

import sys

from camkit.cli import main

sys.exit(main())
