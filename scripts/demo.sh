#!/usr/bin/env bash
# Quick start: set up, then run the embedded default experiment (synthetic corpus -> pretrain -> transfer).
# Extra arguments are Hydra overrides, e.g. `bash scripts/demo.sh trainer.max_steps=50`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python run.py "$@"
