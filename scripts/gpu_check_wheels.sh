#!/usr/bin/env bash
# Downloads, HERE (with network), the wheels that scripts/gpu_check.sh installs on a GPU
# machine without network: the project's dependencies its image ('cuda': Python 3.12,
# torch, numpy, pyyaml, tqdm, nvidia-ml-py, httpx... preinstalled) lacks. Into .whl/
# (git-ignored), ~6 MB; a device run carries it (`carry: [".whl"]`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  optuna==5.1.0 SQLAlchemy==2.1.9 alembic==1.20.1 Mako==1.4.3 colorlog==6.12.0 greenlet==3.5.6 cmaes==0.13.1
ls -l .whl
