"""Schemathesis against the served OpenAPI schema of a live `tuner serve`, with a token.

Two fixed-seed runs, a fixed number of examples per operation (about a minute in all on 2
cores): every operation with generated names, then every operation on a real ask/tell
study (`name` pinned to it) so ask, report, tell and the trial reads answer past their
404. The checks: no 5xx, every status code and content type documented, every response
body and header valid against the schema, 405s that say Allow.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests._api_support import TINY_SPACE, LiveServer, new_token, sqlite_db

pytest.importorskip("schemathesis")
pytestmark = pytest.mark.slow

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "unsupported_method",
    ]
)
EXAMPLES = 25


def _st_run(server: LiveServer, token: str, report: Path, *extra: str, config: Path | None = None) -> dict:
    st = Path(sys.executable).with_name("st")
    cmd = [str(st)] + (["--config-file", str(config)] if config else []) + [
        "run", f"{server.base}/openapi.json", "--checks", CHECKS, "-H", f"Authorization: Bearer {token}",
        "--max-examples", str(EXAMPLES), "--seed", "20261206", "--workers", "1", "--no-color",
        "--generation-database", "none", "--request-timeout", "30",
        "--report", "json", "--report-json-path", str(report), *extra,
    ]  # fmt: skip
    # cwd: its cache (.schemathesis/) and any schemathesis.toml lookup stay out of the repo
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=report.parent)
    assert report.exists(), done.stdout[-4000:] + done.stderr[-4000:]
    result = json.loads(report.read_text())
    if done.returncode != 0 or result["failures"] or result["errors"]:
        print(done.stdout)  # every failure with its curl reproduction
    assert done.returncode == 0 and not result["failures"] and not result["errors"], (result["failures"], result["errors"])
    print(f"schemathesis {' '.join(extra) or 'all operations'}: operations {result['operations']}, cases {result['test_cases']}")
    return result


def test_served_schema_holds_for_generated_requests(tmp_path):
    url = sqlite_db(tmp_path)
    token = new_token(url)
    headers = {"Authorization": f"Bearer {token}"}
    server = LiveServer(url, "--no-run").start()
    try:
        # timeout=60: on a loaded 2-core machine the first requests (the first ask starts the
        # server's sampler and writer processes) can take longer than httpx's 5 s default
        created = httpx.post(
            f"{server.base}/api/v1/studies", headers=headers, timeout=60,
            json={"name": "s1", "space": TINY_SPACE, "run": False, "n_trials": 100_000},
        )  # fmt: skip
        assert created.status_code == 201, created.text
        for value in (100.0, 120.0, 90.0):
            number = httpx.post(f"{server.base}/api/v1/studies/s1/ask", headers=headers, timeout=60).json()["trial_number"]
            told = httpx.post(f"{server.base}/api/v1/studies/s1/trials/{number}/tell", headers=headers, json={"values": [value]}, timeout=60)
            assert told.status_code == 200, told.text
        running = httpx.post(f"{server.base}/api/v1/studies/s1/ask", headers=headers, timeout=60).json()["trial_number"]
        assert running == 3  # left RUNNING for the pinned run's report and tell

        # First on the real study: the unpinned run's stateful phase finds `s1` in the list
        # and may stop or delete it. DELETE is left out here for the same reason.
        pinned = tmp_path / "schemathesis.toml"
        pinned.write_text('[parameters]\n"path.name" = "s1"\n"path.number" = 3\n')
        on_study = _st_run(server, token, tmp_path / "on_study.json", "--exclude-method", "DELETE", config=pinned)
        reached = on_study["valid_rates"]
        for operation in ("POST /api/v1/studies/{name}/ask", "POST /api/v1/studies/{name}/trials/{number}/report", "POST /api/v1/studies/{name}/trials/{number}/tell", "GET /api/v1/studies/{name}/trials"):
            # past the 404: answered (2xx) or refused by the trial's state (409, told already)
            assert sum(phase["accepted"] + phase["conflicts"] for phase in reached[operation].values()) > 0, (operation, reached[operation])

        anywhere = _st_run(server, token, tmp_path / "anywhere.json")
        assert anywhere["operations"]["tested"] == anywhere["operations"]["selected"] >= 25
        # the server is still healthy afterwards: nothing reset or wedged it
        assert httpx.get(f"{server.base}/api/v1/health").status_code == 200
    finally:
        server.stop()
