#!/usr/bin/env bash
# One-call acceptance run: bash scripts/gpu_check.sh [--out DIR] [--device cuda|cpu] [--quick]
#
# Runs every step of benchmarks/gpu_check (probe, telemetry, TF32, memory model, a real
# study, the fidelity check against an independent PyTorch loop, profile, device strings,
# precision matrix, OOM and device-assert recovery, NCCL) each under its own time cap and
# writes DIR/summary.json and DIR/summary.md (default DIR: artifacts/gpu_check). A failed
# step is recorded, never fatal; the exit code is 0 when the summary was written.
#
# Python: $PYTHON, else .venv/bin/python, else python3. On a GPU machine without network,
# the project's dependencies that its image lacks travel as wheels in .whl/ (made here by
# scripts/gpu_check_wheels.sh); they are installed into a private folder, not the system.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi

if ! "$PY" -c 'import optuna, sqlalchemy, yaml' 2>/dev/null; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    site="${GPU_CHECK_SITE:-/tmp/gpu_check_site}"
    echo "[gpu_check] installing $(ls .whl/*.whl | wc -l) carried wheels into $site" >&2
    if "$PY" -m pip --version >/dev/null 2>&1; then
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" .whl/*.whl
    else
      # No pip in this interpreter: a wheel is a zip laid out as site-packages expects.
      mkdir -p "$site"
      for wheel in .whl/*.whl; do "$PY" -m zipfile -e "$wheel" "$site"; done
    fi
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "[gpu_check] optuna/sqlalchemy/pyyaml missing and no .whl/ folder: run scripts/gpu_check_wheels.sh first" >&2
    exit 2
  fi
fi

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$PY" -m benchmarks.gpu_check "$@"
