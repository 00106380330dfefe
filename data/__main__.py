"""``python -m data`` is ``python -m data.translate``."""

import sys

from .translate import main

sys.exit(main())
