#!/usr/bin/env bash
# Mutation testing of the auth code (docs/reliability.md, "Auth and tokens"): mutmut 3 over
# api/auth.py, api/deps.py and api/access.py, killed by tests/test_auth_matrix.py and
# tests/test_tokens.py (PostgreSQL and the CLI subprocess test left out: speed; a subprocess
# is invisible to mutmut's per-test coverage anyway). Runs in a throw-away copy of HEAD, so
# neither mutmut's config nor its mutants/ ever enter the repository or the test suite.
#
#   scripts/mutmut_auth.sh [SECONDS]      # time cap, default 1500
#   cd DIR && mutmut run --max-children 2  # resume a run stopped at the cap (DIR: printed at the end)
#   PYTHON_BIN=/path/to/venv/bin scripts/mutmut_auth.sh
# Needs `pip install mutmut` (3.x) in the venv. Prints the surviving mutants at the end.
set -euo pipefail
cap="${1:-1500}"
bin="${PYTHON_BIN:-$(dirname "$(command -v python)")}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d /tmp/mutmut-auth.XXXXXX)"
git -C "$repo" archive HEAD | tar -x -C "$work"
# timeout_multiplier: mutmut's CPU-time limit per mutant is its estimate x 15 x 2 by
# default; on the shared machine at a load of 15-20 that marked killed-able mutants
# "timeout" (docs/reliability.md). 40 leaves room; a real hang still ends.
cat > "$work/setup.cfg" <<'CFG'
[mutmut]
timeout_multiplier=40
source_paths=api
only_mutate=api/auth.py
    api/deps.py
    api/access.py
also_copy=tuner
    alembic
    alembic.ini
    search_spaces
pytest_add_cli_args_test_selection=tests/test_auth_matrix.py
    tests/test_tokens.py
pytest_add_cli_args=-p
    no:cacheprovider
    -m
    not postgres
    -k
    not cli
    -q
CFG
cd "$work"
PYTHONPATH= timeout "$cap" "$bin/mutmut" run --max-children 2 || echo "mutmut stopped (exit $?; 124 = time cap reached)"
PYTHONPATH= "$bin/mutmut" results | grep -v "not checked" || true
echo "mutants and results kept in $work"
