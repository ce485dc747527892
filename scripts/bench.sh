#!/usr/bin/env bash
# Runs every benchmark in benchmarks/ (not part of the test suite). Each prints its figures
# and the ratios against the peers it ran side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. "${TUNER_VENV:-.venv}/bin/activate"
bash scripts/services.sh
for bench in benchmarks/*.py; do
  [ "$(basename "$bench")" = "__init__.py" ] && continue
  echo "=== $bench"
  python "$bench" "$@"
done
