"""The general-continual-learning table of the DER paper: MNIST-360, cells, best
hyper-parameters, published values.

Buzzega, Boschini, Porrello, Abati, Calderara, "Dark Experience for General Continual
Learning: a Strong, Simple Baseline", NeurIPS 2020, the MNIST-360 table (ER, A-GEM-R, GSS,
DER, DER++ at buffers 200 / 500 / 1000). Protocol: ../shared/PROTOCOLS.md §F; the stream is
`sequax.data.mnist360` (its docstring lists how it follows mammoth's `datasets/mnist_360.py`).

    python -m sequax.launch.reproduce --table=der_gcl             # every cell, 5 seeds each
    python -m sequax.launch.reproduce --table=der_gcl --cells=mnist360/der
    python -m sequax.launch.reproduce --table=der_gcl --dry_run   # build and check every cell

    cells()                              # [("mnist360", "er", 200), ...]
    config("mnist360", "derpp", 500)     # the ml_collections config of one cell
    PUBLISHED[("mnist360", "der", 200)]  # {"class_il": 55.22}

The protocol, as mammoth's `utils/continual_training.py` (commit 7ab9db9, the paper's code)
runs it: one pass over the 27 segments of the stream, the method never told where a segment
ends (`config.training.task_free`), plain SGD, MNISTMLP (784-100-100, Xavier-uniform weights,
the `mlp` backbone at its default `init="xavier"`, as the DER table's configs), and ONE
evaluation at the end, the accuracy over the whole (rotated) test set of digits 0-8. The
stream's own batch size is the method's training batch (`data.options.batch_size` =
`training.batch_size`): mammoth mixes each batch's two classes from `args.batch_size`.

The metric. mammoth reports the pooled accuracy, correct / total over every test image. Our
summary's class-IL "acc" is the unweighted mean of the final accuracy row over the 27
segments, which is not it (each segment's test set is its two classes', of unequal sizes);
the pooled accuracy is the test-size-weighted mean of that row, the last value of
`sequax.engine.metrics.seen_accuracy_curve(R, test_sizes)` (each class's test set is in 6
segments, so the weighted mean counts every test image 6 times), and equally the trace over
the sum of the last phase's confusion counts (`confusion.json`, every task's test set counted
once). `cell_result` reads it that way; the launcher must call it for this table (see its
docstring). The difference from the segment mean is small (-0.1 to +0.4 points on the cells run).

Hyper-parameters: mammoth `utils/best_args.py`, key 'mnist-360', at commit 7ab9db9 (2020-10-05,
the first commit, the paper's code; unchanged in every later version, verified at d20f640,
0d727a7 and the 2026 HEAD e75a491). bs = training batch (= the stream's), mb = replay batch:
  ER       200 / 500 / 1000: lr 0.2, bs 1 / 1 / 4, mb 16
  A-GEM-R  200 / 500 / 1000: lr 0.1, bs 16 / 16 / 4, mb 128
  DER      200 / 500 / 1000: lr 0.1 / 0.2 / 0.1, bs 16 / 16 / 8, mb 64 / 16 / 16, α 0.5
  DER++    200 / 500 / 1000: lr 0.2, bs 16, mb 16 / 16 / 128, α 0.5 / 0.5 / 0.2, β 1.0
  GSS: no 'mnist-360' entry (the paper's GSS values were not kept). Used here: mammoth's
       seq-mnist GSS values for buffers 200/500 (lr 0.1, mb 10, gss_minibatch_size 10,
       batch_num 1 = `training.glances`) at every buffer, with bs 16 (the MNIST-360 batch of
       DER, DER++ and A-GEM-R at 200/500; seq-mnist's GSS bs 128 would change the stream).
A-GEM-R is `agem` with `memory="reservoir"` (mammoth's agem_r.py); while the installed `agem`
has no `memory` field its cells are left out of `cells()` and listed in NOT_RUN.

Differences from mammoth, none deliberate beyond those of `data/mnist360.py` (each chunk
read without replacement, each test image once):
  * The head has 9 outputs; the paper's code built `MNISTMLP(28 * 28, 10)`, whose tenth
    output is never a target (the cross-entropy only pushes its logit down). Our class-IL
    evaluation at the end takes the argmax over the 9 classes; mammoth's over 10.
  * The engine drops a segment's last batch when it is shorter than the batch size (a
    segment ends when one of its two chunks runs out): at bs 16 that is 163 of the 54,051
    training images (0.3 %), at bs 8 and 4 fewer, at bs 1 none.
  * Every seed reads the same stream (`data.seed` 0); mammoth's stream order is random per
    run (its shuffled batch-1 loaders).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import ml_collections
import numpy as np

from sequax.configs import common
from sequax.configs.reproduce.cells import cell_name, method_buffer_arg, require_cell

TITLE = "DER (Buzzega et al., NeurIPS 2020), MNIST-360 (general continual learning)"
BENCHMARK = "mnist360"
NUM_SEGMENTS = 27  # 3 rounds of the 9 class pairs (mammoth's MNIST-360)
BUFFERS = (200, 500, 1000)
METHODS = ("er", "agem_r", "gss", "der", "derpp")

# (benchmark, method, buffer) -> published pooled accuracy (%), every value read in the
# MNIST-360 table of the reference code's README (aimagelab/mammoth README.md at commit
# 7ab9db97e3b5df6e1d9974468c7958f5c07696e1, the 2020 code), the values
# ../shared/PROTOCOLS.md §F recalls. No standard deviations are given there.
_PUBLISHED = {
    "er": (49.27, 65.04, 75.18),
    "agem_r": (28.34, 28.13, 29.21),
    "gss": (43.92, 54.45, 63.84),
    "der": (55.22, 69.11, 75.97),
    "derpp": (54.16, 69.62, 76.03),
}
PUBLISHED = {
    (BENCHMARK, method, buffer): dict(class_il=values[i])
    for method, values in _PUBLISHED.items()
    for i, buffer in enumerate(BUFFERS)
}
SOURCE = (
    "aimagelab/mammoth README.md (MNIST-360 table), commit "
    "7ab9db97e3b5df6e1d9974468c7958f5c07696e1; ours is the pooled accuracy over the whole test "
    "set, as mammoth's `evaluate` (see `table.cell_result`)"
)
VERIFIED = set(PUBLISHED)  # see SOURCE

# method -> (lr, batch, algorithm name, algorithm hyper-parameters); any value may be a
# 3-tuple over BUFFERS. "replay_batch" is mammoth's minibatch_size.
HYPER = {
    "er": (0.2, (1, 1, 4), "er", dict(replay_batch=16)),
    "agem_r": (0.1, (16, 16, 4), "agem", dict(replay_batch=128, memory="reservoir")),
    "gss": (0.1, 16, "gss", dict(replay_batch=10, gss_minibatch_size=10)),
    "der": (
        (0.1, 0.2, 0.1),
        (16, 16, 8),
        "der",
        dict(replay_batch=(64, 16, 16), alpha=0.5, num_classes=9),
    ),
    "derpp": (
        0.2,
        16,
        "derpp",
        dict(replay_batch=(16, 16, 128), alpha=(0.5, 0.5, 0.2), beta=1.0, num_classes=9),
    ),
}
GSS_BATCH_NUM = 1  # mammoth's --batch_num: optimizer steps per incoming batch (glances)

# Seeds per cell (the launcher's --seeds, 3 by default, is raised to this for every cell):
# ER-200 varies by about 3 points from seed to seed here, so 3 seeds would pin a mean only to
# about ±2 points, the bound itself.
SEEDS = {cell_name((BENCHMARK, m, b)): 5 for m in METHODS for b in BUFFERS}

# Cell name -> why ours differs from the published value, with the evidence
# (docs/reproductions/der_gcl.md prints the note of every cell outside the bound).
NOTES: dict[str, str] = {
    "mnist360/der-200": (
        "seed noise: three of the table's five seeds land at 59-60 (pooled 59.93, 55.51, 54.12, "
        "59.48, 60.28; seed std 2.84, standard error 1.3). Seeds 5-14 of the same config give "
        "55.56 ± 1.21, 0.34 above the published 55.22 (`python -m sequax.launch.train "
        "--config=configs/reproduce/der_gcl/mnist360.py:der,200 --config.runs=10 "
        "--config.seed=5 --workdir=W`, read with `table.pooled_accuracy(W, runs=10)`); all 15 "
        "seeds together give 56.33 ± 2.12 (standard error 0.55), within the bound."
    ),
}


def agem_reservoir_available() -> bool:
    """Whether the installed `agem` has A-GEM-R's reservoir memory (`memory="reservoir"`)."""
    from sequax.algorithms.agem import AGEM

    return "memory" in {f.name for f in dataclasses.fields(AGEM)}


# Cells the default invocation skips, with why (the launcher lists them in the report).
NOT_RUN: dict[str, str] = (
    {}
    if agem_reservoir_available()
    else {
        cell_name((BENCHMARK, "agem_r", b)): (
            "the installed `agem` has no `memory` field (A-GEM-R's reservoir memory, "
            "`memory='reservoir'`), so this cell cannot be built yet"
        )
        for b in BUFFERS
    }
)


def cells() -> list[tuple[str, str, int]]:
    """Every cell of the MNIST-360 table in table order (benchmark, method, buffer), the
    A-GEM-R cells only where `agem` has its reservoir memory."""
    return [c for c in PUBLISHED if cell_name(c) not in NOT_RUN]


def _per_buffer(value, buffer: int):
    return value[BUFFERS.index(buffer)] if isinstance(value, tuple) else value


def config(benchmark: str, method: str, buffer: int) -> ml_collections.ConfigDict:
    """The config of one cell: MNIST-360, task-free, one pass, the best hyper-parameters."""
    require_cell(PUBLISHED, "DER-GCL", (benchmark, method, buffer))
    lr, batch, name, hyper = HYPER[method]
    lr, batch = _per_buffer(lr, buffer), _per_buffer(batch, buffer)
    hyper = {k: _per_buffer(v, buffer) for k, v in hyper.items()}
    hyper["replay_batch"] = min(hyper["replay_batch"], buffer)
    if name == "agem":  # unused by the reservoir memory, but validated against the stream
        hyper["num_tasks"] = NUM_SEGMENTS
    config_ = common.base_config()
    config_.data.scenario = "mnist_360"
    config_.data.num_tasks = NUM_SEGMENTS
    config_.data.options = ml_collections.ConfigDict(dict(batch_size=batch))
    config_.model = ml_collections.ConfigDict(
        dict(name="mlp", widths=(100, 100), dropout=0.0, init="xavier")
    )
    config_.algorithm = ml_collections.ConfigDict(dict(name=name, capacity=buffer, **hyper))
    config_.optimizer.lr = lr
    config_.training.batch_size = batch
    config_.training.epochs = 1
    config_.training.task_free = True
    config_.training.glances = GSS_BATCH_NUM if name == "gss" else 1
    return config_


def pooled_accuracy(folder: Path, runs: int | None = None) -> np.ndarray:
    """Each run's pooled accuracy (a fraction) over the whole test set after the last
    segment: the trace over the sum of the last phase's class-IL confusion counts
    (`confusion.json`; every task's test set counted once, so every test image 6 times).

    `runs`: the vmapped runs of the cell (WORKDIR/<cell>/runs/NNN/confusion.json); None, one
    run written at the cell's folder itself."""
    folder = Path(folder)
    paths = (
        [folder / "confusion.json"]
        if runs is None
        else [folder / "runs" / f"{r:03d}" / "confusion.json" for r in range(runs)]
    )
    out = []
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no confusion counts, so no pooled MNIST-360 accuracy for this cell"
            )
        final = np.asarray(json.loads(path.read_text())["confusion"], np.float64)[-1]
        out.append(np.trace(final) / final.sum())
    return np.asarray(out)


def cell_result(summary: dict, folder: Path) -> dict[str, tuple[float, float]]:
    """{"class_il": (mean, std)} in % of the pooled accuracy over the seeds (std with ddof 1,
    as the summary table's): mammoth's MNIST-360 metric, in place of the segment mean that
    `launch.reproduce.cell_result` reads from the summary."""
    runs = len(summary["runs"]) if "runs" in summary else None
    values = 100 * pooled_accuracy(folder, runs)
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return {"class_il": (float(values.mean()), std)}


def get_config_for(benchmark: str, arg: str | None):
    """The `get_config` of `mnist360.py`: arg is "METHOD,BUFFER[,local]"."""
    method, buffer, local = method_buffer_arg(benchmark, arg, "der,500")
    config_ = config(benchmark, method, buffer)
    return common.shrink_local(config_) if local else config_
