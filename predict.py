#!/usr/bin/env python
"""Batched inference from the command line: `python predict.py --help` shows every option and example. The code is mblip/predict.py."""

import sys

from mblip.predict import main


if __name__ == "__main__":
    sys.exit(main())
