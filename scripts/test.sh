#!/usr/bin/env bash
# README command 2: set up, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. "${TUNER_VENV:-.venv}/bin/activate"
bash scripts/services.sh
ruff check .
# --durations=25: CI output names the slowest tests (the suite must stay <= 15 min on 2 cores)
exec python -m pytest -q -p no:cacheprovider --durations=25 "$@"
