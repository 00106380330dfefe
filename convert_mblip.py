#!/usr/bin/env python
"""Conversion between BLIP-2 / released mBLIP checkpoints / parts and mBLIP model repositories: `python convert_mblip.py --help` shows every option and example. The code is mblip/convert.py."""

import sys

from mblip.convert import main


if __name__ == "__main__":
    sys.exit(main())
