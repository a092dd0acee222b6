"""``python -m kdbench.report``: see :func:`kdbench.report.main`."""

import sys

from kdbench.report import main

sys.exit(main())
