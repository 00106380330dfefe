"""``python -m mblip.data`` is ``python -m mblip.data.translate``."""

import sys

from .translate import main


sys.exit(main())
