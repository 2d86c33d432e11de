"""The Mirzadeh protocol's MNIST table, plus La-MAML, HAT and KCL: cells, settings, published
values.

Mirzadeh, Farajtabar, Pascanu, Ghasemzadeh, "Understanding the Role of Training Regimes in
Continual Learning" (Stable SGD), NeurIPS 2020, Table 1 (Permuted and Rotated MNIST, 20
tasks, MLP 784-256-256-10, 1 epoch per task); Mirzadeh et al., "Linear Mode Connectivity in
Multitask and Continual Learning" (MC-SGD), ICLR 2021; Gupta, Yadav, Paull, "La-MAML",
NeurIPS 2020, Table 1 (Rotated MNIST, its own protocol); HAT (Serra et al., ICML 2018) and
KCL (Derakhshani et al., ICML 2021) on Split MNIST task-IL, and KCL on Permuted MNIST.
Protocols: ../shared/PROTOCOLS.md §B.

    python -m sequax.launch.reproduce --table=mirzadeh                  # every cell, 3 seeds each
    python -m sequax.launch.reproduce --table=mirzadeh --cells=pmnist/  # the Permuted MNIST column
    python -m sequax.launch.reproduce --table=mirzadeh --dry_run        # build and check every cell

writes docs/reproductions/mirzadeh.md (accuracy and forgetting per cell beside the papers').

    cells()                                  # [("pmnist", "naive", None), ...]
    config("rmnist", "er", 200)              # the ml_collections config of one cell
    PUBLISHED[("pmnist", "stable_sgd", None)]   # {"domain_il": 80.1}
    FORGETTING[("pmnist", "stable_sgd", None)]  # {"domain_il": 0.09}

The setting read per cell is the key of its PUBLISHED entry: "domain_il" for the Permuted
and Rotated MNIST streams (one shared 10-way head; KCL's P-MNIST row too, the only view the
loop writes for a domain-IL stream, though KCL classifies each test set with its own task's
coreset, so that number is task-informed as in the KCL paper), "task_il" for HAT and KCL on
Split MNIST (each task classified with its own gates or coreset; their class-IL row is
task-informed too and not read).
A PUBLISHED value of None is "our reference number": no paper reports that protocol.

Hyper-parameters, and where each comes from (verified = read in the authors' code,
imirzadeh/stable-continual-learning at commit 3c4aeca, "the reference scripts"):
- naive: `stable_sgd/main.py` with `replicate_experiment_2.sh`'s plastic SGD: lr 0.01,
  γ 1.0, batch 10, no dropout, and main.py's SGD momentum 0.8 rebuilt every task (verified).
- EWC, A-GEM, ER-Reservoir: the reference scripts run them through the A-GEM codebase
  (`external_libs/continual_learning_algorithms/replicate_mnist.sh` and `fc_mnist.py`):
  plain SGD lr 0.1, no decay, batch 32, 50,000 training examples per task, episodic memory
  1 example per class per task (200 in all over 20 tasks), memory batch 10, EWC λ = the
  code's default `synap_stgth` 10 (all verified). Our EWC's penalty carries the ½ the A-GEM
  code omits, so λ 10 there is `lam=20` here; the A-GEM code's EWC also uses a running
  (EMA) Fisher rescaled to [0, 1] per tensor, ours the per-example empirical Fisher at the
  task's end, unnormalised, so the same λ is not the same penalty (see NOTES).
- Stable SGD, MC-SGD, La-MAML, HAT, KCL: the settings of their config files
  (configs/pmnist_stable_sgd.py, rmnist_stable_sgd.py, pmnist_mc_sgd.py, rmnist_mc_sgd.py,
  rmnist_lamaml.py, smnist_hat.py, smnist_kcl.py, pmnist_kcl.py; each docstring says where
  its values come from).
- Multitask: one phase over all 20 tasks' data, the Stable SGD regime without decay (lr
  0.1, momentum 0.8, batch 64, dropout 0.25): our choice, the paper's multitask setting is
  not in the reference scripts.

Forgetting: ours is `sequax.engine.metrics.average_forgetting` (Chaudhry et al. 2018):
mean over j < T-1 of max_{l<T-1} R[l, j] − R[T-1, j], a fraction. Mirzadeh's code
(`stable_sgd/utils.py`, `end_experiment`, verified) takes, for tasks 1..T-1, the max of the
task's accuracies logged from its own training on (the final one included) minus the final
one, divided by 100. The two differ in two ways only: ours also takes the rows before task
j was trained into the max (theirs holds zeros there), and theirs is never negative (the
final value is in its max). See `FORGETTING_DEFINITION`.
"""

from __future__ import annotations

import ml_collections

from sequax.configs import rmnist_lamaml, smnist_hat
from sequax.configs.pmnist_kcl import kcl_config
from sequax.configs.pmnist_mc_sgd import MC_SGD
from sequax.configs.pmnist_stable_sgd import mirzadeh_config
from sequax.configs.reproduce.cells import cell_name, require_cell  # noqa: F401 - cell_name is the table's API
from sequax.configs.rmnist_mc_sgd import RMNIST_MC_SGD

TITLE = (
    "Mirzadeh et al. (Stable SGD, NeurIPS 2020; MC-SGD, ICLR 2021), MNIST, with La-MAML, HAT "
    "and KCL"
)
SCENARIOS = {"pmnist": "permuted", "rmnist": "rotated"}
NUM_TASKS = 20
MEMORY = 200  # 1 example per class per task over 20 tasks (the A-GEM code's mem_size 1)

# (benchmark, method, buffer) -> {setting: published final average accuracy in %, or None}.
PUBLISHED = {
    ("pmnist", "naive", None): dict(domain_il=44.4),
    ("pmnist", "ewc", None): dict(domain_il=70.7),
    ("pmnist", "agem", MEMORY): dict(domain_il=65.7),
    ("pmnist", "er", MEMORY): dict(domain_il=72.4),
    ("pmnist", "stable_sgd", None): dict(domain_il=80.1),
    ("pmnist", "mc_sgd", None): dict(domain_il=85.3),
    ("pmnist", "joint", None): dict(domain_il=89.5),
    ("rmnist", "naive", None): dict(domain_il=46.3),
    ("rmnist", "ewc", None): dict(domain_il=48.5),
    ("rmnist", "agem", MEMORY): dict(domain_il=55.3),
    ("rmnist", "er", MEMORY): dict(domain_il=69.2),
    ("rmnist", "stable_sgd", None): dict(domain_il=70.8),
    ("rmnist", "mc_sgd", None): dict(domain_il=82.3),
    ("rmnist", "joint", None): dict(domain_il=89.8),
    ("rmnist_lamaml", "lamaml", 200): dict(domain_il=77.42),
    ("pmnist_kcl", "kcl", None): dict(domain_il=85.5),
    ("smnist", "hat", None): dict(task_il=None),
    ("smnist", "kcl", None): dict(task_il=None),
}
# The same cells' published average forgetting, a fraction (None: not reported or not
# defined, e.g. multitask training has one row and no forgetting).
FORGETTING = {
    ("pmnist", "naive", None): dict(domain_il=0.53),
    ("rmnist", "naive", None): dict(domain_il=0.52),
    ("pmnist", "ewc", None): dict(domain_il=0.23),
    ("rmnist", "ewc", None): dict(domain_il=0.48),
    ("pmnist", "agem", MEMORY): dict(domain_il=0.29),
    ("rmnist", "agem", MEMORY): dict(domain_il=0.42),
    ("pmnist", "er", MEMORY): dict(domain_il=0.16),
    ("rmnist", "er", MEMORY): dict(domain_il=0.21),
    ("pmnist", "stable_sgd", None): dict(domain_il=0.09),
    ("rmnist", "stable_sgd", None): dict(domain_il=0.10),
    ("pmnist", "mc_sgd", None): dict(domain_il=0.06),
    ("rmnist", "mc_sgd", None): dict(domain_il=0.08),
    ("pmnist_kcl", "kcl", None): dict(domain_il=0.02),
}
SOURCE = (
    "Stable SGD (NeurIPS 2020) Table 1 and MC-SGD (ICLR 2021) as listed in ../shared/PROTOCOLS.md "
    "§B; La-MAML (NeurIPS 2020) Table 1; KCL (ICML 2021) Table 1 as recalled"
)
# Values read in a reprint or the authors' code (../shared/PROTOCOLS.md §B marks them "v");
# every other value is recalled from memory of the paper and is to be checked against it.
VERIFIED = {
    ("pmnist", "naive", None),
    ("rmnist", "naive", None),
    ("rmnist", "ewc", None),
    ("rmnist", "mc_sgd", None),
    ("rmnist_lamaml", "lamaml", 200),
}  # accuracy
FORGETTING_VERIFIED = {("pmnist", "naive", None)}
FORGETTING_DEFINITION = (
    "ours is `sequax.engine.metrics.average_forgetting` (Chaudhry et al. 2018): mean over tasks j "
    "< T−1 of max_{l<T−1} R[l, j] − R[T−1, j], as a fraction; Mirzadeh's code "
    "(stable_sgd/utils.py) takes for each task j < T−1 the max of its accuracies from its own "
    "training on, the final one included, minus the final one. They differ only where a task's "
    "accuracy before it was trained beats every later one (ours larger) or the final accuracy is "
    "the task's best (ours negative, theirs 0)"
)

# Cell name -> why ours differs from the published value, with the evidence, or how the cell
# follows the reference code where that is not obvious.
NOTES: dict[str, str] = {
    "pmnist/ewc": (
        "run as the reference scripts run it (the A-GEM codebase's EWC, facebookresearch/agem "
        "model/model.py): each task's Fisher min-max rescaled to [0, 1] over all tensors and kept "
        "alone, not summed (`EWC(normalize=True, online=True, gamma=0)`), lam 20 = the codebase's "
        "λ 10 without our ½. With our default unnormalised Fisher summed over tasks, the same lam "
        "gave 85.62 ± 0.50 here (3 seeds), 15 points above the paper, and diverged on one R-MNIST "
        "seed in task 20 (lr · lam · F past 2)."
    ),
    "rmnist/ewc": (
        "run as pmnist/ewc (the A-GEM codebase's normalised Fisher), here with 10 seeds for the "
        "draw's spread. In the reference scripts' own regime (`--variant=agem_codebase`: 23 tasks "
        "at 180/23° steps) the same 10 seeds give 47.07 ± 2.97 against the published 48.5."
    ),
    "pmnist/naive": (
        "the reference loop itself gives the same on our data: `python -m "
        "evidence.torch_mirzadeh_check --mz_cells=pmnist/naive --mz_seeds=0,1,2` (a PyTorch "
        "transcription of stable_sgd/main.py: file order, a new SGD(momentum 0.8) per task, lr "
        "0.01, batch 10) gives 47.07, 38.25, 37.44 (40.92 ± 5.34) on the permutations our seeds "
        "0-2 draw, against our 41.81 ± 0.42; the published 44.4 lies inside that spread."
    ),
    "pmnist/stable_sgd": (
        "the reference loop on our data lands below the paper too. stable_sgd/models.py applies "
        "`nn.functional.dropout(out, p)` (training=True by default), so the reference also drops "
        "units at evaluation: transcribed that way (`python -m evidence.torch_mirzadeh_check "
        "--mz_cells=pmnist/stable_sgd --mz_seeds=0,1,2`) it gives 71.27 ± 1.90; with dropout off "
        "at evaluation, as we evaluate (`--nomz_eval_dropout`), 77.09 ± 1.99 against our 76.09 ± "
        "1.55. Neither reaches 80.1, so the difference is in the published setting (the README's "
        "corrected γ, dropout and batch are used here), not in our Stable SGD."
    ),
    "rmnist/stable_sgd": (
        "as pmnist/stable_sgd: the reference loop on our streams gives 62.81 ± 0.28 (its dropout "
        "on at evaluation) and 67.68 ± 1.08 (off, as ours) against our 68.14 ± 1.16 "
        "(`python -m evidence.torch_mirzadeh_check --mz_cells=rmnist/stable_sgd --mz_seeds=0,1,2 "
        "[--nomz_eval_dropout]`). At γ 0.55 the learning rate reaches the 5e-5 floor from task 13, "
        "so the late tasks barely train in either loop."
    ),
    "pmnist/agem-200": (
        "published value recalled, not verified. The reference scripts run A-GEM in the A-GEM "
        "codebase (external_libs/continual_learning_algorithms/fc_mnist.py) with 23 tasks and 64 "
        "memory examples per reference gradient (see `agem_codebase_regime`); in that regime "
        "(`--variant=agem_codebase`) ours gives 69.20 at seed 0, also above 65.7. Our A-GEM step "
        "equals mammoth's `observe` (tests/algorithms/test_agem.py) and its DER-table cells are "
        "within the bound or explained there."
    ),
    "pmnist/er-200": (
        "published value recalled, not verified. In the reference scripts' own regime "
        "(`--variant=agem_codebase`: 23 tasks, 64 memory examples concatenated to each batch of "
        "32) ours gives 80.51 at seed 0, further above 72.4; our ER is within the bound on every "
        "DER-table cell."
    ),
    "rmnist/er-200": (
        "the stream differs from the one the paper ran ER on: the reference scripts run ER in the "
        "A-GEM codebase, whose rotated MNIST has 23 tasks at 180/23 = 7.8° steps "
        "(construct_rotate_mnist) and which replays 64 examples per step. In that regime "
        "(`--variant=agem_codebase`) ours gives 70.43 at seed 0, within the bound of the published "
        "69.2; on the Stable SGD paper's 10° stream, 63.77 ± 1.91."
    ),
    "pmnist_kcl/kcl": (
        "our KCL forgets as little as the paper's (0.017 ± 0.001 against 0.02) but learns the "
        "later tasks worse: its learning accuracy is 77.8 % (87-94 % on tasks 1-8, 80 and 72 % on "
        "tasks 9-10, 64-70 % on tasks 11-20). The reference's regime, which this cell follows (lr "
        "0.1 · 0.5^t, t from 1, floored at 5e-5, a new SGD per task), trains task 10 at lr 1e-4 "
        "and tasks 11-20 at the 5e-5 floor: they are classified by the kernel ridge fit to their "
        "coreset on features learned for earlier permutations. The reference's evaluation quirks "
        "do not explain the gap: each test set evaluated with the latest task's λ, γ, β and in "
        "test batches of 256 (its min-max normalisation is per batch) gives 76.24 ± 1.00 (`python "
        "-m sequax.launch.reevaluate --cell=pmnist_kcl/kcl --eval_batch_size=256 "
        "--set=eval_ridge=latest`). The published 85.5 is recalled, not verified, and the "
        "reference's MNIST script (replicate_experiment_rff_rbf_mnist.sh) runs main_rbf.py, an "
        "exact L1-RBF kernel without random features or KL, which as committed cannot run "
        "(main_rbf rejects the default kernel 'rff'; the MNIST MLP's forward takes no `kernel`): "
        "the setting behind the number is not in the code. `--variant=kcl_main_rbf` runs that "
        "kernel; not run: it trained at 2.5 steps/s here (3 seeds; the 210 × 200 × 256 tensor |h_i "
        "− h_j| of each step and its gradient are memory-bound on this CPU), about 13 h for the "
        "cell, a GPU job."
    ),
    "pmnist/joint": (
        "the published multitask values are approximate (~89.5) and their setting is not in the "
        "reference scripts; ours trains one epoch over all 20 tasks' data in the Stable SGD "
        "regime without decay (lr 0.1, momentum 0.8, batch 64, dropout 0.25), which an MLP of "
        "this size fits to 94-96 %."
    ),
    "rmnist/joint": "as pmnist/joint (~89.8 published).",
}

# Cells whose seed std is large next to their distance from the paper: 10 seeds (vmapped).
SEEDS = {"rmnist/ewc": 10}

# Cells the default invocation skips, with why; `--cells=<name>` runs one anyway.
NOT_RUN: dict[str, str] = {
    "pmnist_kcl/kcl": (
        "too long for the default invocation on this 2-core CPU: KCL's step at batch 10 also runs "
        "the task's 200-example coreset through the MLP and D = 1024 random features (about 0.9 "
        "GFLOP a step), so its 3 seeds × 20 × 60,000 examples took 114 min here (554 samples/s). "
        "Train it apart: `python -m sequax.launch.reproduce --table=mirzadeh --cells=pmnist_kcl/` "
        "(resumable: a rerun goes on from the last finished task); once done, every invocation's "
        "report reads it back. KCL is also in the table on Split MNIST (smnist/kcl)."
    ),
}


def _a_gem_code(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The A-GEM codebase's regime used by the reference scripts for EWC, A-GEM and ER."""
    config.optimizer.lr = 0.1
    config.optimizer.momentum = 0.0
    config.data.train_per_task = 50_000
    return config


def _mirzadeh(benchmark: str, method: str) -> ml_collections.ConfigDict:
    scenario = SCENARIOS[benchmark]
    if method == "naive":
        config = mirzadeh_config(scenario, "naive", dropout=0.0, batch_size=10)
        config.optimizer.lr = 0.01
        return config
    if method == "ewc":
        return _a_gem_code(
            mirzadeh_config(
                scenario,
                "ewc",
                dropout=0.0,
                batch_size=32,
                lam=20.0,
                online=True,
                gamma=0.0,
                normalize=True,
            )
        )
    if method in ("agem", "er"):
        kwargs = dict(capacity=MEMORY, replay_batch=10) | (
            dict(num_tasks=NUM_TASKS) if method == "agem" else {}
        )
        return _a_gem_code(mirzadeh_config(scenario, method, dropout=0.0, batch_size=32, **kwargs))
    if method == "stable_sgd":
        decay = (
            0.8 if benchmark == "pmnist" else 0.55
        )  # γ as corrected by the author (configs/*_stable_sgd.py)
        return mirzadeh_config(scenario, "stable_sgd", dropout=0.25, batch_size=64, decay=decay)
    if method == "mc_sgd":
        return mirzadeh_config(
            scenario,
            "mc_sgd",
            dropout=0.2,
            batch_size=64,
            **(MC_SGD if benchmark == "pmnist" else RMNIST_MC_SGD),
        )
    if method == "joint":
        return mirzadeh_config(scenario, "joint", dropout=0.25, batch_size=64)
    raise ValueError(f"no Mirzadeh-protocol method {method!r}")


AGEM_CODEBASE_TASKS = (
    23  # fc_mnist.py: NUM_TASKS = 23 and `num_tasks = NUM_TASKS #- K_FOR_CROSS_VAL`
)


def agem_codebase_regime(cell, cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The EWC / A-GEM / ER cells as the reference scripts actually run them (evidence, not the
    table): imirzadeh/stable-continual-learning replicate_experiment_2.sh calls
    external_libs/continual_learning_algorithms/replicate_mnist.sh, which runs fc_mnist.py
    without --eps-mem-batch or --mem-size, so the file's defaults hold: NUM_TASKS = 23 (the
    A-GEM protocol's 20 + 3 cross-validation tasks, never subtracted), every task permuted
    (construct_permute_mnist), rotation (i−1)·180/23° − U[0, 180/23)° (construct_rotate_mnist),
    a memory of 1 example per class per task and 64 memory examples per step
    (EPS_MEM_BATCH_SIZE = 64; the script's EPS_MEM_BATCH_SIZE=10 is never passed)."""
    benchmark, method, _ = cell
    if benchmark not in SCENARIOS or method not in ("ewc", "agem", "er"):
        raise ValueError(
            f"the agem_codebase variant applies to the P-/R-MNIST EWC, A-GEM and ER cells, "
            f"not {cell_name(cell)}"
        )
    cfg.data.num_tasks = AGEM_CODEBASE_TASKS
    if benchmark == "pmnist":
        cfg.data.options.first_task_identity = False
    else:
        # our "step" protocol starts at 0·step, theirs at (0 − 1)·step: every angle one step
        # higher here
        cfg.data.options.step = cfg.data.options.jitter = 180.0 / AGEM_CODEBASE_TASKS
    if method in ("agem", "er"):
        cfg.algorithm.capacity = 10 * AGEM_CODEBASE_TASKS
        cfg.algorithm.replay_batch = 64
        if method == "agem":
            cfg.algorithm.num_tasks = AGEM_CODEBASE_TASKS
    return cfg


# Variant name -> (what it is, fn(cell, config) -> config): `reproduce --variant=NAME`.
def kcl_main_rbf(cell, cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """KCL on Permuted MNIST as the reference's MNIST script names it
    (mmderakhshani/KCL replicate_experiment_rff_rbf_mnist.sh: `python -m stable_sgd.main_rbf ...
    --tau 0`): the exact kernel exp(-0.25 ||h - h'||_1) on the features, no random features and
    no KL term; every other setting as the cell. As committed the script cannot run (main_rbf
    rejects the default kernel 'rff', and the MNIST MLP's forward takes no `kernel`), so this
    is the setting it names, not one it ran."""
    if cell_name(cell) != "pmnist_kcl/kcl":
        raise ValueError(
            f"the kcl_main_rbf variant applies to pmnist_kcl/kcl, not {cell_name(cell)}"
        )
    cfg.algorithm.kernel = "rbf"
    cfg.algorithm.kl_weight = 0.0
    return cfg


VARIANTS = {
    "agem_codebase": (
        "the EWC/A-GEM/ER cells in the reference scripts' own regime",
        agem_codebase_regime,
    ),
    "kcl_main_rbf": (
        "KCL on Permuted MNIST with the kernel the reference's MNIST script names (main_rbf: "
        "exact L1-RBF kernel, no random features, tau 0)",
        kcl_main_rbf,
    ),
}


def cells() -> list[tuple[str, str, int | None]]:
    """Every cell of the table, in table order (benchmark, method, buffer or None)."""
    return list(PUBLISHED)


def config(benchmark: str, method: str, buffer: int | None = None) -> ml_collections.ConfigDict:
    """The config of one cell (see the module docstring for each setting's source)."""
    require_cell(PUBLISHED, "Mirzadeh", (benchmark, method, buffer))
    if benchmark in SCENARIOS:
        cfg = _mirzadeh(benchmark, method)
        # Each seed of the reference code draws its own permutations/angles (np.random.seed(seed)).
        cfg.data.draws_per_run = True
        return cfg
    if benchmark == "rmnist_lamaml":
        return rmnist_lamaml.get_config()
    if benchmark == "pmnist_kcl":
        return kcl_config("permuted", NUM_TASKS, 10, dict(first_task_identity=True))
    if method == "hat":
        return smnist_hat.get_config()
    return kcl_config("split", 5, 2, dict(classes_per_task=2))
