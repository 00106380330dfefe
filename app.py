#!/usr/bin/env python
"""The Gradio demo app: `python app.py --help` shows every option and example. The code is mblip/app.py."""

import sys

from mblip.app import main


if __name__ == "__main__":
    sys.exit(main())
