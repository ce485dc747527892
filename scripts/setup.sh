#!/usr/bin/env bash
# Creates .venv and installs tuner with the right torch build for this machine.
# Idempotent: a second run with an unchanged pyproject.toml does nothing.
#
# torch: on a machine without an NVIDIA GPU we install the CPU build torch==2.13.0 (on the
# team's machines pip takes it from a local wheel in seconds); where `nvidia-smi -L` lists
# a GPU we let pip take the default CUDA build. TUNER_TORCH_SPEC overrides both, e.g.
# TUNER_TORCH_SPEC="torch==2.13.0" or a wheel path.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${TUNER_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
EXTRAS="${TUNER_EXTRAS:-dev,ray}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

stamp="$VENV/.tuner-installed"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$EXTRAS"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

# pip's find-links set-up on the team machines warns about every missing local index
# folder; those lines are noise, everything else pip says is kept.
pip_install() {
  python -m pip install --disable-pip-version-check -q "$@" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}

if ! python -c "import torch" 2>/dev/null; then
  if [ -n "${TUNER_TORCH_SPEC:-}" ]; then
    echo "setup: installing torch from TUNER_TORCH_SPEC=$TUNER_TORCH_SPEC"
    pip_install "$TUNER_TORCH_SPEC"
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found, installing the default (CUDA) torch build"
    pip_install torch
  else
    echo "setup: no NVIDIA GPU, installing the CPU torch build torch==2.13.0"
    pip_install torch==2.13.0
  fi
fi

echo "setup: installing tuner[$EXTRAS] (editable)"
pip_install -e ".[$EXTRAS]"
echo "$want" > "$stamp"
