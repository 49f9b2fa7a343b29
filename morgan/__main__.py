"""``python -m morgan``: the same as the ``morgan`` command."""

from __future__ import annotations

import sys

from morgan.cli import main

sys.exit(main())
