"""``python -m kdbench.report``: see :func:`kdbench.report.cli.main`."""

import sys

from kdbench.report.cli import main

sys.exit(main())
