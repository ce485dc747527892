#!/usr/bin/env bash
# Hand-made auth holes (docs/reliability.md, "Auth and tokens", experiment 2): each case is
# one edit to a throw-away copy of HEAD, then tests/test_auth_matrix.py runs against it.
# A hole must make the matrix fail; the lines that pass are explained in the doc.
#   PYTHON_BIN=/path/to/venv/bin scripts/auth_holes.sh
set -uo pipefail
bin="${PYTHON_BIN:-$(dirname "$(command -v python)")}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
case_() {  # name file old new
  local work
  work="$(mktemp -d /tmp/auth-holes.XXXXXX)"
  git -C "$repo" archive HEAD | tar -x -C "$work"
  "$bin/python" - "$work/$2" "$3" "$4" <<'PY'
import sys
path, old, new = sys.argv[1:]
text = open(path).read()
assert old in text, (path, old)
open(path, "w").write(text.replace(old, new, 1))
PY
  local out
  out=$(cd "$work" && PYTHONPATH="$work" timeout 300 "$bin/python" -m pytest -q -p no:cacheprovider tests/test_auth_matrix.py 2>&1 | tail -1)
  rm -rf "$work"
  echo "$1 | $out"
}
tell='("POST", f"{V1}/studies/{{name}}/trials/{{number}}/tell"): '
case_ "tell route PUBLIC in the table" api/access.py "${tell}ASK_TELL" "${tell}PUBLIC"
case_ "tell route READ in the table" api/access.py "${tell}ASK_TELL" "${tell}READ"
case_ "tell route: WriterDep -> ReaderDep" api/routes/studies.py 'body: TellCreate, ctx: ContextDep, _: WriterDep' 'body: TellCreate, ctx: ContextDep, _: ReaderDep'
case_ "no router-level authorize on /api/v1" api/main.py 'v1 = APIRouter(prefix=API_PREFIX, dependencies=[Depends(authorize)])' 'v1 = APIRouter(prefix=API_PREFIX)'
case_ "no router-level authorize on the dashboard" api/main.py 'app.include_router(dashboard.router, dependencies=[Depends(authorize)])' 'app.include_router(dashboard.router)'
case_ "scope check skipped" api/deps.py 'if not principal.has(rule.scope):' 'if False:'
case_ "ownership check skipped" api/deps.py 'if rule.owned and not principal.is_admin:' 'if False:'
case_ "admin implies nothing" api/auth.py 'return scope in self.scopes or Scope.ADMIN in self.scopes' 'return scope in self.scopes'
case_ "reads open even with read_requires_token" api/deps.py 'if rule.scope is Scope.READ and not ctx.settings.read_requires_token:' 'if rule.scope is Scope.READ:'
case_ "anonymous let through on token routes" api/deps.py '    if principal is None:
        raise _unauthorized(
            f"this endpoint' '    if principal is None:
        return None
        raise _unauthorized(
            f"this endpoint'
case_ "revoked tokens accepted" api/auth.py 'ApiTokenRow.token_hash == digest, ApiTokenRow.revoked_at.is_(None)' 'ApiTokenRow.token_hash == digest'
case_ "an unknown token ignored" api/deps.py '        raise _unauthorized("the bearer token is unknown or revoked"' '        return None
        raise _unauthorized("the bearer token is unknown or revoked"'
case_ "owner compared to the token name" api/deps.py 'if exists and owner != principal.owner:' 'if exists and owner != principal.token_name:'
case_ "created_by from the token name" api/services/studies.py 'created_by=principal.owner,' 'created_by=principal.token_name,'
