"""The MNIST half of Table 2 of the DER paper: cells, best hyper-parameters, published values.

Buzzega, Boschini, Porrello, Abati, Calderara, "Dark Experience for General Continual
Learning: a Strong, Simple Baseline", NeurIPS 2020; hyper-parameters from the authors'
best-args file (mammoth `utils/best_args.py`) as listed in ../shared/PROTOCOLS.md §A.

    cells()                                  # [("smnist", "er", 500), ("pmnist", "sgd", None), ...]
    config("smnist", "er", 500)              # the ml_collections config of one cell
    PUBLISHED[("smnist", "er", 500)]         # {"class_il": 86.12, "task_il": 99.04}

Conventions that differ from mammoth's argument names (each explained in the method's file):
oEWC's λ here carries the paper's ½, so mammoth's e_lambda is `lam / 2`; "sgd" is `naive`.
Seq-MNIST class-IL and task-IL come from the same run (task-IL masks other tasks' logits).
"""

from __future__ import annotations

import ml_collections

from sequax.configs import common
from sequax.configs.reproduce.cells import cell_name, require_cell  # noqa: F401 - cell_name is the table's API

TITLE = "DER (Buzzega et al., NeurIPS 2020), Table 2, MNIST"
BENCHMARKS = {"smnist": "split", "pmnist": "permuted", "rmnist": "rotated"}

# Cell name -> why our value differs from the published one, with the evidence
# (docs/reproductions/der.md prints the note of every cell outside the bound). "The
# reference loop" is `evidence/torch_der_check.py`: a plain-PyTorch transcription of the
# mammoth 2020 code (commit 7ab9db97) run on our data with the same per-seed draws,
# `python -m evidence.torch_der_check --cells=CELL --seeds=0,1,2` (1 torch thread).
_LOOP = "`python -m evidence.torch_der_check --cells={cell} --seeds={seeds}`"
NOTES: dict[str, str] = {
    "smnist/lwf": (
        "the published value is plain SGD + L2, not LwF. The 2020 training loop "
        "(mammoth `utils/training.py` at 7ab9db97) never calls `model.begin_task`, where "
        "`lwf.py` warms up the classifier, attaches the old logits and advances "
        "`current_task`: as published, LwF trains with no distillation and a cross-entropy "
        "over all 10 classes. The reference loop run as written gives 19.65 ± 0.06 / "
        "95.48 ± 2.08 (class-/task-IL, 10 seeds), the published 19.62 / 94.11; with "
        "`begin_task` called it gives 20.45 ± 0.53 / 98.23 ± 1.16 (3 seeds), as we do "
        "(" + _LOOP.format(cell="smnist/lwf", seeds="0,1,2") + ", `--nobegin_task` for the "
        "first)."
    ),
    "pmnist/oewc": (
        "the published value is not what the reference code gives with its best "
        "hyper-parameters (lr 0.1, e_lambda 0.7, γ 1; the same in the 2022 best-args). The "
        "reference loop on the same permutations gives 58.25 ± 0.30 (seeds 0-2), within 3 "
        "points of ours and 17.5 below 75.79 ("
        + _LOOP.format(cell="pmnist/oewc", seeds="0,1,2")
        + "; its Fisher equals ours to 1e-5, tests/evidence/test_torch_der_check.py). The "
        "value ../shared/PROTOCOLS.md first recalled, 56.84, is close to what the code gives."
    ),
    "pmnist/si": (
        "0.3 points past the bound, within our seed std (1.42): the reference loop on the "
        "same permutations gives 67.02 ± 1.26, itself 1.2 above the published 65.86 "
        "(" + _LOOP.format(cell="pmnist/si", seeds="0,1,2") + ")."
    ),
    "rmnist/sgd": (
        "the angle draw decides most of this cell: over 10 draws the reference loop gives "
        "63.3 to 83.7, 73.40 ± 6.15 (seeds 0-9, "
        + _LOOP.format(cell="rmnist/sgd", seeds="0,1,2,3,4,5,6,7,8,9")
        + "), ours 73.22 ± 5.94 on the same draws; per seed the two differ by under 2 "
        "points. The published 67.66 is 0.9 of that std below. mammoth's 2020 loop also "
        "shows no SGD-to-oEWC gap here (76.9 vs 77.2 on seeds 0-2), unlike the published "
        "67.66 vs 77.35."
    ),
    "rmnist/si": (
        "the reference loop on the same angles gives 79.52 ± 2.33 (seeds 0-2, "
        + _LOOP.format(cell="rmnist/si", seeds="0,1,2")
        + "), as we do, about 8 points above "
        "the published 71.91; R-MNIST SGD shows the same offset. SI's step follows mammoth "
        "exactly (element-wise gradient clipping at 1, ω += lr·g²; "
        "tests/evidence/test_torch_der_check.py checks one step against ours)."
    ),
}
_ICARL = (
    "the published iCaRL row predates the maintainers' iCaRL fix (mammoth issue #10: "
    '"A previous issue made us find a bug in our code, so we updated our iCarl '
    "implementation\"). In the 2020 code iCaRL appends its exemplars to the task's training "
    "set in `begin_task`, which the 2020 loop never calls (see smnist/lwf), so the published "
    "network trained without rehearsal and only its nearest-mean classifier saw the "
    "exemplars (that append would also have mangled MNIST exemplars: "
    "docs/reproductions/der_evidence.md §2a). Ours rehearses them, as the fixed iCaRL does; "
    "the task-IL numbers agree."
)
NOTES.update({f"smnist/icarl-{b}": _ICARL for b in (200, 500, 5120)})
_AGEM = (
    "A-GEM's Seq-MNIST class-IL varies by 5.4 to 7.3 points from seed to seed here (10 "
    "seeds); the three buffers differ from the published values by +2.3, +4.6 and -3.7, "
    "alternating in sign and each within one seed std (about 1 to 2 standard errors of a "
    "10-seed mean). Task-IL agrees within 0.2. A PyTorch check of A-GEM is not written yet."
)
NOTES.update({f"smnist/agem-{b}": _AGEM for b in (200, 500, 5120)})
NOTES["pmnist/agem-500"] = (
    "0.85 points past the bound with a seed std of 2.23 over 3 seeds (standard error 1.3); "
    "buffers 200 and 5120 agree within 0.7. Not checked with the PyTorch loop yet."
)
# Cells run with more seeds than `--seeds` (cell name -> seeds), each for a stated reason.
# Seq-MNIST A-GEM class-IL varies by 6-9 points from seed to seed (3-seed run of the
# 2026-11-22 table), so 3 seeds pin its mean only to about ±4 points; 10 seeds is the
# paper's own count and costs 40 s per cell here.
# The regularisation rows of P-/R-MNIST: each seed draws its own permutations or angles and
# the draw decides much of the result (R-MNIST SGD over 10 angle draws in the PyTorch
# transcription of the reference loop: 63.3 to 83.7, std 6.2), so they get 10 seeds too.
SEEDS = {
    "smnist/agem-200": 10,
    "smnist/agem-500": 10,
    "smnist/agem-5120": 10,
    "pmnist/sgd": 10,
    "rmnist/sgd": 10,
    "rmnist/oewc": 10,
    "rmnist/si": 10,
}
BUFFERS = (200, 500, 5120)
BUFFER_METHODS = ("er", "gem", "agem", "icarl", "der", "derpp")

# (benchmark, method, buffer) -> published accuracy (%), every value verified against the
# results table of the reference code's README (aimagelab/mammoth README.md at commit
# 7ab9db97e3b5df6e1d9974468c7958f5c07696e1, the 2020 code; docs/reproductions/der_evidence.md).
# Three values that ../shared/PROTOCOLS.md §A recalls differ from it and are corrected here:
# S-MNIST SGD task-IL 94.94 (PROTOCOLS: 97.86, ER-200's value), P-MNIST oEWC 75.79 (56.84)
# and P-MNIST SI 65.86 ("~56").
PUBLISHED = {
    ("smnist", "joint", None): dict(class_il=95.57, task_il=99.51),
    ("smnist", "sgd", None): dict(class_il=19.60, task_il=94.94),
    ("smnist", "oewc", None): dict(class_il=20.46, task_il=98.39),
    ("smnist", "si", None): dict(class_il=19.27, task_il=96.00),
    ("smnist", "lwf", None): dict(class_il=19.62, task_il=94.11),
    ("pmnist", "joint", None): dict(domain_il=94.33),
    ("pmnist", "sgd", None): dict(domain_il=40.70),
    ("pmnist", "oewc", None): dict(domain_il=75.79),
    ("pmnist", "si", None): dict(domain_il=65.86),
    ("rmnist", "joint", None): dict(domain_il=95.76),
    ("rmnist", "sgd", None): dict(domain_il=67.66),
    ("rmnist", "oewc", None): dict(domain_il=77.35),
    ("rmnist", "si", None): dict(domain_il=71.91),
}
# method: {benchmark: ((class_il per buffer), (task_il per buffer))} or (domain_il per buffer)
_BUFFERED = {
    "er": dict(
        smnist=((80.43, 86.12, 93.40), (97.86, 99.04, 99.33)),
        pmnist=(72.37, 80.60, 89.90),
        rmnist=(85.01, 88.91, 93.45),
    ),
    "gem": dict(
        smnist=((80.11, 85.99, 95.11), (97.78, 98.71, 99.44)),
        pmnist=(66.93, 76.88, 87.42),
        rmnist=(80.80, 81.15, 88.57),
    ),
    "agem": dict(
        smnist=((45.72, 46.66, 54.24), (98.61, 98.93, 98.93)),
        pmnist=(66.42, 67.56, 73.32),
        rmnist=(81.91, 80.31, 80.18),
    ),
    "icarl": dict(smnist=((70.51, 70.10, 70.60), (98.28, 98.32, 98.32))),
    "der": dict(
        smnist=((84.55, 90.54, 94.90), (98.80, 98.84, 99.29)),
        pmnist=(81.74, 87.29, 91.66),
        rmnist=(90.04, 92.24, 94.14),
    ),
    "derpp": dict(
        smnist=((85.61, 91.00, 95.30), (98.76, 98.94, 99.47)),
        pmnist=(83.58, 88.21, 92.26),
        rmnist=(90.43, 92.77, 94.65),
    ),
}
for _method, _rows in _BUFFERED.items():
    for _bench, _values in _rows.items():
        for _i, _buffer in enumerate(BUFFERS):
            if _bench == "smnist":
                PUBLISHED[(_bench, _method, _buffer)] = dict(
                    class_il=_values[0][_i], task_il=_values[1][_i]
                )
            else:
                PUBLISHED[(_bench, _method, _buffer)] = dict(domain_il=_values[_i])
SOURCE = "aimagelab/mammoth README.md, commit 7ab9db97e3b5df6e1d9974468c7958f5c07696e1"
VERIFIED = set(PUBLISHED)  # see SOURCE


def _per_buffer(values, buffer):
    return values[BUFFERS.index(buffer)] if isinstance(values, tuple) else values


# (benchmark, method) -> (lr, algorithm name, algorithm hyper-parameters, extra); lr and
# hyper-parameters may be 3-tuples over BUFFERS. "mb" is the replay (or reference) batch.
HYPER = {
    ("smnist", "sgd"): (0.03, "naive", {}),
    ("pmnist", "sgd"): (0.2, "naive", {}),
    ("rmnist", "sgd"): (0.2, "naive", {}),
    ("smnist", "joint"): (0.03, "joint", {}),
    ("pmnist", "joint"): (0.2, "joint", {}),
    ("rmnist", "joint"): (0.2, "joint", {}),
    ("smnist", "oewc"): (
        0.03,
        "ewc",
        dict(lam=180.0, gamma=1.0, online=True, likelihood_weighted=True),
    ),
    ("pmnist", "oewc"): (
        0.1,
        "ewc",
        dict(lam=1.4, gamma=1.0, online=True, likelihood_weighted=True),
    ),
    ("rmnist", "oewc"): (
        0.1,
        "ewc",
        dict(lam=1.4, gamma=1.0, online=True, likelihood_weighted=True),
    ),
    ("smnist", "si"): (0.1, "si", dict(c=1.0, xi=0.9)),
    ("pmnist", "si"): (0.1, "si", dict(c=0.5, xi=1.0)),
    ("rmnist", "si"): (0.1, "si", dict(c=1.0, xi=1.0)),
    ("smnist", "lwf"): (0.03, "lwf", dict(alpha=1.0, temperature=2.0), dict(weight_decay=5e-4)),
    ("smnist", "er"): ((0.01, 0.1, 0.1), "er", dict(replay_batch=10)),
    ("pmnist", "er"): (0.2, "er", dict(replay_batch=128)),
    ("rmnist", "er"): (0.2, "er", dict(replay_batch=128)),
    ("smnist", "agem"): (0.1, "agem", dict(replay_batch=128)),
    ("pmnist", "agem"): (0.1, "agem", dict(replay_batch=128)),
    ("rmnist", "agem"): ((0.1, 0.3, 0.3), "agem", dict(replay_batch=128)),
    ("smnist", "der"): (
        (0.03, 0.03, 0.1),
        "der",
        dict(alpha=(0.2, 1.0, 0.5), replay_batch=(10, 128, 128)),
    ),
    ("pmnist", "der"): (0.2, "der", dict(alpha=(1.0, 1.0, 0.5), replay_batch=128)),
    ("rmnist", "der"): (0.2, "der", dict(alpha=(1.0, 0.5, 0.5), replay_batch=128)),
    ("smnist", "derpp"): (
        (0.03, 0.03, 0.1),
        "derpp",
        dict(alpha=(0.2, 1.0, 0.2), beta=(1.0, 0.5, 0.5), replay_batch=(128, 10, 64)),
    ),
    ("pmnist", "derpp"): (
        (0.1, 0.2, 0.2),
        "derpp",
        dict(alpha=(1.0, 1.0, 0.5), beta=(1.0, 0.5, 1.0), replay_batch=128),
    ),
    ("rmnist", "derpp"): (
        (0.1, 0.2, 0.2),
        "derpp",
        dict(alpha=(1.0, 0.5, 0.5), beta=(0.5, 1.0, 0.5), replay_batch=128),
    ),
    ("smnist", "gem"): ((0.01, 0.03, 0.1), "gem", dict(gamma=(1.0, 0.5, 1.0))),
    ("pmnist", "gem"): (0.1, "gem", dict(gamma=0.5)),
    ("rmnist", "gem"): (0.01, "gem", dict(gamma=0.5)),
    ("smnist", "icarl"): (0.1, "icarl", dict(replay_batch=10), dict(weight_decay=0.0)),
}


def cells() -> list[tuple[str, str, int | None]]:
    """Every cell the paper reports, in table order (benchmark, method, buffer or None)."""
    return list(PUBLISHED)


def config(benchmark: str, method: str, buffer: int | None = None) -> ml_collections.ConfigDict:
    """The config of one cell: the DER protocol with the best hyper-parameters."""
    require_cell(PUBLISHED, "DER", (benchmark, method, buffer))
    lr, name, hyper, *extra = HYPER[(benchmark, method)]
    hyper = {k: _per_buffer(v, buffer) for k, v in hyper.items()}
    if method in BUFFER_METHODS:
        hyper["capacity"] = buffer
        if "replay_batch" in hyper:
            hyper["replay_batch"] = min(hyper["replay_batch"], buffer)
    if name in ("gem", "agem"):
        hyper["num_tasks"] = common.DER_SCENARIOS[BENCHMARKS[benchmark]]["num_tasks"]
    cfg = common.der_config(BENCHMARKS[benchmark], name, lr=_per_buffer(lr, buffer), **hyper)
    for key, value in (extra[0] if extra else {}).items():
        cfg.optimizer[key] = value
    # Every run of the paper's P-/R-MNIST draws its own permutations/angles (mammoth draws
    # them from the unseeded global numpy state per run). The angles alone move R-MNIST SGD
    # by 16 points (63.1 to 79.1 over four draws), so seeds sharing one draw would report
    # that draw, not the protocol: each seed draws its own here.
    if benchmark in ("pmnist", "rmnist"):
        cfg.data.draws_per_run = True
    return cfg


def get_config_for(benchmark: str, arg: str | None):
    """The `get_config` of the benchmark files: arg is "METHOD[,BUFFER][,local]"."""
    parts = [p for p in (arg or "").split(",") if p]
    local = "local" in parts
    parts = [p for p in parts if p != "local"]
    if not parts:
        raise ValueError(
            f"name a cell: {benchmark}.py:METHOD[,BUFFER][,local], e.g. {benchmark}.py:er,500"
        )
    config_ = config(benchmark, parts[0], int(parts[1]) if len(parts) > 1 else None)
    return common.shrink_local(config_) if local else config_
