"""The wheel works without the source tree: presets, migrations and the service are inside it.

Builds the wheel from a copy of the sources, installs it (no deps) into a fresh venv that
borrows the current environment's installed dependencies (torch, optuna, ...) through a .pth
file, and runs `tuner tune PRESET`, `tuner db upgrade` and `tuner serve` from an empty
directory. A .pth line that is a plain path adds that directory to sys.path without running
the .pth files inside it, so the editable install of this checkout stays invisible.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# what a build needs; a copy keeps setuptools' build/ dir (stale files) out of the checkout
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "alembic.ini", "tuner", "api", "alembic", "search_spaces")


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """(bin dir of a venv with only the wheel installed, env to run it with)."""
    for needed in ("pip", "setuptools"):  # found, not imported: importing setuptools here upsets distutils
        if importlib.util.find_spec(needed) is None:
            pytest.skip(f"building and installing the wheel needs {needed} in this environment")
    tmp = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    source = tmp / "src"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, source / name)
    _run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist")], source, env)
    (wheel,) = (tmp / "dist").glob("tuner-*.whl")

    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp, env)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site_dir = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp, env).stdout.strip())
    # this interpreter's environment (sys.prefix-based), wherever CI made it
    deps = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (site_dir / "borrowed_deps.pth").write_text("".join(f"{path}\n" for path in deps))
    # pip itself is borrowed too; --ignore-installed so it never touches the borrowed environment's tuner
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q", str(wheel)], tmp, env)

    where = _run(
        [str(python), "-c", "import tuner, api; print(tuner.__file__); print(api.__file__)"], tmp, env
    ).stdout.split()
    for path in where:
        assert Path(path).is_relative_to(site_dir), f"{path} is not the wheel's copy in {site_dir}"
    return python.parent, env


def test_installed_wheel_tunes_a_preset(installed, tmp_path):
    bin_dir, env = installed
    result = _run(
        [str(bin_dir / "tuner"), "tune", "gpt_tiny_system", "--trials", "2", "--steps", "2", "--confirm", "0",
         "--no-baseline", "--storage", "sqlite:///tune.db", "--output", "best.yaml"],
        tmp_path, env, timeout=180,
    )
    assert "finished" in result.stderr and "trial 2/2" in result.stderr
    assert (tmp_path / "best.yaml").read_text().strip()


def test_installed_wheel_migrates_and_serves(installed, tmp_path):
    bin_dir, env = installed
    upgraded = _run([str(bin_dir / "tuner"), "db", "upgrade", "--storage", "sqlite:///x.db"], tmp_path, env)
    assert "empty ->" in upgraded.stdout
    current = _run([str(bin_dir / "tuner"), "db", "check", "--storage", "sqlite:///x.db"], tmp_path, env)
    assert "schema is current" in current.stdout

    port = _free_port()
    server = subprocess.Popen(
        [str(bin_dir / "tuner"), "serve", "--port", str(port), "--storage", "sqlite:///x.db"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, f"tuner serve exited {server.returncode}:\n{server.stdout.read()}"
            try:
                status, body = _get(f"http://127.0.0.1:{port}/api/v1/health")
                break
            except OSError:
                assert time.monotonic() < deadline, "tuner serve did not answer within 60 s"
                time.sleep(0.3)
        assert (status, body) == (200, '{"status":"ok"}')
        status, body = _get(f"http://127.0.0.1:{port}/api/v1/ready")  # head revision read from the wheel's migrations
        assert status == 200 and '"ready":true' in body
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
