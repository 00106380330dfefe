#!/usr/bin/env bash
# The main job (README "Quickstart"): set-up, then the offline demo, mBLIP in miniature, into outputs/demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
python train_mblip.py "$@"
