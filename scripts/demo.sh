#!/usr/bin/env bash
# README command 1: set up, then tune the built-in tiny GPT on this machine with the
# embedded SQLite store (tuner.db in the working directory). No server needed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. "${TUNER_VENV:-.venv}/bin/activate"
exec tuner tune search_spaces/gpt_tiny_system.yaml --workload gpt --trials "${TUNER_DEMO_TRIALS:-12}" \
  --study "${TUNER_DEMO_STUDY:-demo}" --output best_config.yaml "$@"
