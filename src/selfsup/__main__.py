"""``python -m selfsup`` is the ``selfsup`` command."""

import sys

from selfsup.cli import main

sys.exit(main())
