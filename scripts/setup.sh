#!/usr/bin/env bash
# Idempotent set-up: a virtualenv in .venv with wsp and its dependencies, and WordNet 3.0 for nltk.
# Re-running it is cheap: the install step is skipped while pyproject.toml is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
stamp=.venv/.wsp-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[dev]'
  touch "$stamp"
fi
.venv/bin/python -m wsp.hashtags.wordnet provision
