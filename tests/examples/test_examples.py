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

from sequax.data import load_packaged_mnist

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
