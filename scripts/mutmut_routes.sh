#!/usr/bin/env bash
# Mutation testing of the routes and the ask/tell numbering (docs/reliability.md,
# "Experiment 3"), the companion of scripts/mutmut_auth.sh. Two parts, each a mutmut 3 run
# in its own throw-away copy of HEAD (neither mutmut's config nor its mutants/ ever enter
# the repository or the test suite):
#
#   numbering  tuner/asktell/batch_commit.py: trial numbers under the study-row lock, the
#              n_trials budget, tells and reports stored, trials of a lost answer failed.
#              Killed by the tests that drive the committer in this process (the ask/tell
#              engine with writer_process=False): test_asktell_durable.py,
#              test_asktell_engine.py, test_writer_process.py. The API tests commit from
#              the writer's child process, which mutmut's per-test coverage cannot see.
#   routes     api/routes/*.py: ask/report/tell/heartbeat, studies, trials, results,
#              tokens, catalog, health. Killed by test_auth_matrix.py, test_api_asktell.py,
#              test_api_studies.py, test_tokens.py (PostgreSQL and CLI-subprocess tests
#              left out: speed; a subprocess is invisible to mutmut's coverage).
#
#   scripts/mutmut_routes.sh numbering|routes [SECONDS [MUTANT...]]  # time cap, default 1500;
#                                                  # mutant names or globs: only those
#   cd DIR && mutmut run --max-children 2                 # resume a run stopped at the cap
#   PYTHON_BIN=/path/to/venv/bin scripts/mutmut_routes.sh numbering
#   MUTMUT_CHILDREN=1 scripts/mutmut_routes.sh routes 3600   # one worker (default 2): two parts side by side
# Needs `pip install mutmut` (3.x) in the venv. Prints the surviving mutants at the end.
set -euo pipefail
part="${1:?usage: mutmut_routes.sh numbering|routes [SECONDS]}"
cap="${2:-1500}"
shift $(( $# < 2 ? $# : 2 ))
bin="${PYTHON_BIN:-$(dirname "$(command -v python)")}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
case "$part" in
  numbering)
    source=tuner
    mutate="tuner/asktell/batch_commit.py"
    copy="api"
    tests="tests/test_asktell_durable.py
    tests/test_asktell_engine.py
    tests/test_writer_process.py"
    deselect=""
    ;;
  routes)
    source=api
    mutate="api/routes/*.py"
    copy="tuner"
    tests="tests/test_auth_matrix.py
    tests/test_api_asktell.py
    tests/test_api_studies.py
    tests/test_tokens.py"
    # by node id, not `-k "not cli"`: that would also drop test_concurrent_clients_*
    deselect="    --deselect
    tests/test_tokens.py::test_tuner_token_create_list_revoke_cli"
    ;;
  *) echo "unknown part '$part': numbering or routes" >&2; exit 2 ;;
esac
work="$(mktemp -d "/tmp/mutmut-$part.XXXXXX")"
git -C "$repo" archive HEAD | tar -x -C "$work"
# timeout_multiplier=40: see scripts/mutmut_auth.sh (the default marks killable mutants
# "timeout" on the shared machine under load; a real hang still ends).
cat > "$work/setup.cfg" <<CFG
[mutmut]
timeout_multiplier=40
source_paths=$source
only_mutate=$mutate
also_copy=$copy
    alembic
    alembic.ini
    search_spaces
pytest_add_cli_args_test_selection=$tests
pytest_add_cli_args=-p
    no:cacheprovider
    -m
    not postgres and not slow
    -q
$deselect
CFG
if [ "$part" = routes ]; then
  # mutmut 3 never mutates a decorated function (its reason: copies of an @app.post def
  # would register the route again), and every route handler is one. In this copy only,
  # `@router.get(...)` above `def f` becomes `router.get(...)(f)` at the end of the module,
  # in the same order (FastAPI matches routes in registration order): same routes, same
  # endpoint functions, and mutmut mutates the handlers' bodies.
  "$bin/python" - "$work"/api/routes/*.py <<'PY'
import ast
import sys

for path in sys.argv[1:]:
    text = open(path, encoding="utf-8").read()
    lines = text.splitlines(keepends=True)
    drop, registrations = set(), []
    for node in ast.parse(text).body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or not node.decorator_list:
            continue
        for deco in node.decorator_list:
            if not (isinstance(deco, ast.Call) and ast.unparse(deco.func).startswith("router.")):
                sys.exit(f"{path}: {node.name}: unexpected decorator {ast.unparse(deco)}")
            drop.update(range(deco.lineno - 1, deco.end_lineno))
        registrations += [f"{ast.get_source_segment(text, d)}({node.name})\n" for d in reversed(node.decorator_list)]
    if registrations:
        body = [line for i, line in enumerate(lines) if i not in drop]
        open(path, "w", encoding="utf-8").write("".join(body) + "\n\n" + "".join(registrations))
PY
fi
if [ "$part" = numbering ]; then
  # batch_commit builds its statements once per process (functools.cache on _stmts): only
  # the first test of a process would run _Statements.__init__, so mutmut's per-test
  # coverage would credit its mutants to that one test. Cleared before every test (in this
  # throw-away copy only), each committing test builds them and is run against them.
  cat >> "$work/tests/conftest.py" <<'PY'


@pytest.fixture(autouse=True)
def _fresh_writer_statements() -> None:
    import sys

    module = sys.modules.get("tuner.asktell.batch_commit")
    if module is not None:
        module._stmts.cache_clear()
PY
fi
cd "$work"
PYTHONPATH= timeout "$cap" "$bin/mutmut" run --max-children "${MUTMUT_CHILDREN:-2}" "$@" || echo "mutmut stopped (exit $?; 124 = time cap reached)"
PYTHONPATH= "$bin/mutmut" results | grep -v "not checked" || true
echo "mutants and results kept in $work"
