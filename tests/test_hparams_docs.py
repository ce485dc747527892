"""docs/workloads.md's custom workload runs as written: its two package files and its tuning
script, copied from the doc into a folder, tune the workload's own hyperparameters with the
generator on although the workload has no memory model."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]


def doc_files(doc: Path) -> dict[str, str]:
    """Each ```python block of `doc` whose first line is `# path/of/file.py ...`, by path."""
    files = {}
    for block in re.findall(r"```python\n(.*?)\n```", doc.read_text(), flags=re.S):
        first = block.splitlines()[0]
        match = re.match(r"# ([\w/]+\.py)\b", first)
        if match:
            files[match.group(1)] = block + "\n"
    return files


def test_docs_custom_workload_sample_tunes_its_hparams_without_no_generator(tmp_path):
    files = doc_files(ROOT / "docs" / "workloads.md")
    assert {"my_package/workload.py", "my_package/model.py", "tune_my_mlp.py"} <= set(files)
    for path, text in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    (tmp_path / "my_package" / "__init__.py").write_text("")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    ran = subprocess.run([sys.executable, "tune_my_mlp.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "skipped memory predictions" in ran.stdout  # the generator ran and says what it could not do
    study = optuna.load_study(study_name="my-mlp-demo", storage=f"sqlite:///{tmp_path / 'my_mlp.db'}")
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 3
    for t in complete:  # each trial built the model its hparams asked for
        assert t.user_attrs["tuner.result"]["metrics"]["model_parameters"] == 16 * t.params["hidden"] + t.params["hidden"] * 2 + 1
        assert isinstance(t.params["hidden"], int) and isinstance(t.params["dropout"], float)
    assert "best " in ran.stdout and "'hidden': " in ran.stdout
