"""The user examples of `examples/`, run end to end as a user runs them: `python FILE`.

What each test shows:
  * `torch_split_mnist.py` stays within the 30 lines the README promises, and running it
    (a torch CNN with BatchNorm and a torch Dataset defined in the file, DER++ on Split
    MNIST through `config.data.source = "torch"`) keeps old tasks: class-IL ACC far above
    the 19.3 % naive fine-tuning reaches with the same script (which could not pass 40 %);
  * the module written back into torch scores, in torch's own eval mode (its BatchNorm
    running statistics included), what sequax's last accuracy-matrix row says.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sequax.data import load_packaged_mnist

# Whole runs in fresh processes: `make examples` (a CI step of its own), not the default suite.
pytestmark = pytest.mark.examples

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_torch_split_mnist_example_keeps_old_tasks_and_writes_back(tmp_path):
    script = EXAMPLES / "torch_split_mnist.py"
    assert len(script.read_text().splitlines()) <= 30
    # A fresh process in a fresh folder: the script's workdir (runs/...) is relative to it.
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        check=False,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    acc = float(re.search(r"^class_il: acc ([\d.]+)", done.stdout, re.MULTILINE).group(1))
    torch_acc = float(
        re.search(r"^torch: ([\d.]+)% of test digits right", done.stdout, re.MULTILINE).group(1)
    )
    assert acc > 40.0, done.stdout[-2000:]  # naive fine-tuning: 19.3 %
    # Torch's accuracy over all test digits is the last class-IL row weighted by task sizes.
    matrix = json.loads(
        (tmp_path / "runs" / "torch_split_mnist" / "accuracy_matrix.json").read_text()
    )
    sizes = np.bincount(load_packaged_mnist().test_y, minlength=10).reshape(5, 2).sum(1)
    expected = 100 * np.average(matrix["class_il"][-1], weights=sizes)
    assert abs(torch_acc - expected) <= 0.1, (torch_acc, expected)  # 0.1 % = 2 of 2,000 digits


def run_example(name: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, str(EXAMPLES / name)], cwd=cwd, env=env,
                          capture_output=True, check=False, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def final_acc(stdout: str) -> float:
    return float(re.search(r"^class_il: acc ([\d.]+)", stdout, re.MULTILINE).group(1))


def test_custom_method_example_passes_the_contract_and_keeps_old_tasks(tmp_path):
    """A method written outside the package, in 50 lines or fewer: `sequax.testing` passes on
    it, and trained from Python it keeps old tasks (naive fine-tuning: about 19 %)."""
    script = EXAMPLES / "custom_method.py"
    assert len(script.read_text().splitlines()) <= 50
    done = run_example("custom_method.py", tmp_path)
    assert "WeightedReplay holds the contract" in done.stdout
    assert final_acc(done.stdout) > 60.0, done.stdout[-2000:]
    saved = json.loads((tmp_path / "runs" / "custom_method" / "config.json").read_text())
    assert saved["algorithm"]["name"] == "__main__:WeightedReplay"
    assert saved["algorithm"]["weight"] == 2.0


def test_custom_model_example_trains_the_users_flax_module(tmp_path):
    done = run_example("custom_model.py", tmp_path)
    assert final_acc(done.stdout) > 60.0, done.stdout[-2000:]  # DER++ on the user's CNN
    saved = json.loads((tmp_path / "runs" / "custom_model" / "config.json").read_text())
    assert saved["model"]["name"] == "__main__:SmallCNN"


def test_adamw_warmup_cosine_example(tmp_path):
    done = run_example("adamw_cosine.py", tmp_path)
    assert final_acc(done.stdout) > 60.0, done.stdout[-2000:]
    saved = json.loads((tmp_path / "runs" / "adamw_cosine" / "config.json").read_text())
    assert saved["optimizer"]["name"] == "adamw"
    assert saved["optimizer"]["schedule"] == "warmup_cosine"
