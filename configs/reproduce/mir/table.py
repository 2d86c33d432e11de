"""The MNIST rows of the MIR paper: ER and ER-MIR on Split and Permuted MNIST, cells, settings,
published values.

Aljundi, Caccia, Belilovsky, Caccia, Lin, Charlin, Tuytelaars, "Online Continual Learning with
Maximally Interfered Retrieval", NeurIPS 2019, Table 1 (MNIST Split, Permuted MNIST; accuracy
and forgetting). Reference code: optimass/Maximally_Interfered_Retrieval (read at its HEAD,
commit 35eda78, 2020-08-30; `er_main.py` at 9587bc8, `data.py` 1936945, `mir.py` and
`model.py` unchanged since 4af82d1/91b7383). Protocol: ../shared/PROTOCOLS.md §G.

    python -m sequax.launch.reproduce --table=mir              # every cell, 20 / 10 seeds
    python -m sequax.launch.reproduce --table=mir --cells=pmnist/
    python -m sequax.launch.reproduce --table=mir --dry_run    # build and check every cell
    python -m sequax.launch.reproduce --table=mir --variant=five_pairs --cells=smnist/

    cells()                            # [("smnist", "er", 200), ...]
    config("smnist", "mir", 500)       # the ml_collections config of one cell
    PUBLISHED[("smnist", "mir", 500)]  # {"class_il": 87.6}

The protocol, as `Scripts/ER_experiments.sh` runs `er_main.py` (all verified in the code):
  * memory `--mem_size` 100, 50 and 20 examples PER CLASS, times the 10 classes
    (`args.mem_size * args.n_classes`): buffers of 1000, 500 and 200 examples, one reservoir
    (`Buffer.add_reservoir`, every batch offered after its step); 20 runs (`--n_runs 20`);
  * `--samples_per_task 1000`, one pass (`--n_iters 1` = `--disc_iters 1`): the loop breaks
    once more than 1000 examples were seen, so it trains on 101 batches of 10 = 1010 examples
    per task (`train_per_task=1010`), drawn anew per run by its shuffled loader from the 95 %
    training split of the task;
  * batch 10, replay batch `--buffer_batch_size` 10, plain SGD (one optimizer for the whole
    run), lr 0.1 on Split MNIST and 0.05 on Permuted MNIST; the MIR look-ahead step uses the
    same lr; `--subsample 50` candidates for ER-MIR;
  * MLP 784-400-400-10 (`model.MLP`, nf 400), PyTorch's default init (`init="torch"`),
    inputs in [0, 1], one 10-way head (`multiple_heads = False`) for both streams;
  * task ids are used: nothing is replayed during the first task (`rehearse = task > 0`) and
    replay draws only examples of past tasks (`buffer.sample(..., exclude_task=task)`), so
    the cells train with task boundaries (not `task_free`);
  * ER (`rand_replay`) adds the two mean cross-entropies, the batch's and the replayed
    examples' (two `backward()` calls, one `opt.step()`), it does not take one mean over the
    concatenation as sequax's `er` (and mammoth's) does, which halves each part's step and
    also replays the current task. Our `mir` with `subsample = replay_batch = 10` is exactly
    `rand_replay`: 10 uniform candidates of past tasks, all replayed, the two means added.
    The ER rows run that; `--variant=sequax_er` runs them with `er` instead (evidence);
  * Permuted MNIST: 10 tasks, the first unpermuted (`torch.arange`), a domain-IL 10-way head;
  * evaluation after each task on each seen task's whole test set; accuracy = the mean over
    tasks of the final row; forgetting = mean over tasks but the last of (best accuracy of
    the task over all rows, the final one included) − final, a fraction.

The Split MNIST of the reference code is NOT {0,1}, {2,3}, ..., {8,9}. `get_split_mnist`
sorts the data by label and cuts it at `[0] + sorted(argmax((y + i) % 10) for i in 0..9)`,
which repeats the index 0: the five tasks are {0}, {1,2}, {3,4}, {5,6}, {7,8}, and digit 9 is
neither trained nor tested (verified by running the cut on sorted labels). The smnist cells
run that stream (`split` with `increments=(1, 2, 2, 2, 2)` over the 10-class source, so the
head keeps 10 outputs); `--variant=five_pairs` runs the paper's described {0,1}, ..., {8,9}.

Differences from the reference, all known:
  * ER-MIR's `--compare_to_old_logits`, on in every MNIST run of the script, is not in our
    `mir` (see algorithms/mir.py): the reference scores a candidate by post-step loss minus
    min(current loss, the loss of logits stored for it), where the stored logits start at 0
    (loss log 10, since `add_reservoir` stores none) and are overwritten by the current ones
    whenever lower; its indices into the stored logits are positions in the past-task subset
    that `buffer.sample(..., exclude_task=task)` returns, not buffer slots, so once the buffer
    holds current-task examples the logits it compares with belong to other examples. Ours
    scores post-step minus current loss (the method's definition, the flag off).
  * Every seed trains on the same 1010 examples of a task (our `data.train_per_task` subset
    is drawn from `data.seed`); the reference's runs each draw their own. The Permuted MNIST
    permutations are shared by all seeds in both (the reference draws them once with seed 0).
  * The reference averages per-batch test accuracies (batches of 64, the last one shorter)
    and rounds each task's accuracy to 0.01; ours is the fraction of the whole test set.
  * Our class-IL evaluation takes the argmax over the classes of the tasks seen so far; the
    reference's over all 10 logits (digit 9's, never a target, is only pushed down).
  * Our forgetting is `engine.metrics.average_forgetting` (see FORGETTING_DEFINITION).
"""

from __future__ import annotations

import ml_collections

from sequax.configs import common
from sequax.configs.reproduce.cells import (  # noqa: F401 - cell_name is the table's API
    cell_name,
    method_buffer_arg,
    require_cell,
)

TITLE = "MIR (Aljundi et al., NeurIPS 2019), Table 1: ER and ER-MIR on MNIST"
MEMORY_PER_CLASS = (20, 50, 100)  # Scripts/ER_experiments.sh: mems=(100 50 20)
NUM_CLASSES = 10
BUFFERS = tuple(m * NUM_CLASSES for m in MEMORY_PER_CLASS)  # 200, 500, 1000
PUBLISHED_BUFFER = 500  # the one memory size Table 1 reports (recalled: 50 per class)
METHODS = ("er", "mir")
BENCHMARKS = {
    # benchmark -> (scenario, options, num_tasks, lr, view)
    "smnist": ("split", dict(increments=(1, 2, 2, 2, 2)), 5, 0.1, "class_il"),
    "pmnist": ("permuted", dict(first_task_identity=True), 10, 0.05, "domain_il"),
}
SAMPLES_PER_TASK = 1010  # 101 batches of 10: er_main.py's `if sample_amt > 1000: break`
BATCH = 10  # --batch_size
REPLAY_BATCH = 10  # --buffer_batch_size
SUBSAMPLE = 50  # --subsample (ER-MIR's candidates)
RUNS = 20  # --n_runs

# (benchmark, method, buffer) -> published final average accuracy (%) or None (no published
# value: our reference number). Recalled from memory of Table 1, not verified: the paper's
# table could not be read here. Its "±" is the code's 2 * std / sqrt(n_runs) (er_main.py), not
# a std: ER 82.1 ± 1.5 on 20 runs is a seed std of about 3.4 points.
_PUBLISHED = {
    ("smnist", "er"): 82.1,
    ("smnist", "mir"): 87.6,
    ("pmnist", "er"): 78.4,
    ("pmnist", "mir"): 80.1,
}
PUBLISHED = {
    (benchmark, method, buffer): {
        BENCHMARKS[benchmark][4]: (
            _PUBLISHED[(benchmark, method)] if buffer == PUBLISHED_BUFFER else None
        )
    }
    for benchmark in BENCHMARKS
    for method in METHODS
    for buffer in BUFFERS
}
SOURCE = (
    "MIR (NeurIPS 2019) Table 1, recalled from memory (not verified), at the memory size recalled "
    "for it (50 per class, 500); the other memory sizes of the reference script have no published "
    "value (– / ref: our reference number). The paper's ± is 2·std/√20 (er_main.py), a seed std "
    "about 2.2 times larger: 3.4 for Split MNIST ER, 1.6 for ER-MIR, 1.3 on Permuted MNIST. "
    "Avalanche's MIR reproduction targets (ContinualAI/continual-learning-baselines, "
    "tests/target_results.csv at 4900462: Split MNIST 0.87, Permuted MNIST 0.80, memory 500) "
    "agree with the recalled ER-MIR values"
)
VERIFIED: set = set()  # every published value here is recalled
# Published forgetting is not listed: it could not be verified and is not recalled reliably.
FORGETTING: dict = {}
FORGETTING_VERIFIED: set = set()
FORGETTING_DEFINITION = (
    "ours is `sequax.engine.metrics.average_forgetting` (Chaudhry et al. 2018): mean over tasks j "
    "< T−1 of max_{l<T−1} R[l, j] − R[T−1, j]; the reference's er_main.py takes max over every "
    "row, the final one included, minus the final one (never negative), over the same tasks"
)

# Seeds per cell. Split MNIST: the reference's 20 runs (its ER varies by about 3 points from
# run to run; 20 seeds take a minute or two here). Permuted MNIST: 10, half the reference's
# runs: evaluating 10 whole test sets of 10,000 images after each of the 10 tasks is most of a
# cell's time (20 seeds of pmnist/mir-500 took 15 min on this 2-core CPU, 11 of them
# evaluating), and its seed std is under 1 point, so 10 seeds pin the mean to about ±0.3.
SEEDS = {cell_name(c): (RUNS if c[0] == "smnist" else 10) for c in PUBLISHED}

# Cell name -> why ours differs from the published value, with the evidence
# (docs/reproductions/mir.md prints the note of every cell outside the bound). "Five pairs" and
# "sequax er" are `python -m sequax.launch.reproduce --table=mir --workdir=W --cells=smnist/
# --variant=five_pairs` (or `--variant=sequax_er --cells=smnist/er`), 20 seeds each.
NOTES: dict[str, str] = {
    "smnist/er-500": (
        "the gap is in the published setting (or the recalled value), not in our "
        "implementation. The reference loop transcribed to plain PyTorch (er_main.py, mir.py, "
        "buffer.py of optimass/Maximally_Interfered_Retrieval at 35eda78, `rand_replay`) on "
        "this cell's data and 20 seeds gives 87.95 ± 4.11 (er_main.py's rounded metric; 87.92 "
        "exact), ours 87.61 ± 3.30: +0.34, standard error of the difference 1.18. It stays far "
        "above 82.1 with each run drawing its own 1010 examples per task as the reference does "
        "(87.00 ± 3.60) and at the script's lr before 2020-08-30, 0.05 (86.65 ± 2.89); at 200 / "
        "1000 it gives 83.95 / 89.30 (ours 84.81 / 87.51). On the paper's five pairs {0,1}, "
        "..., {8,9} it gives 83.60 ± 4.54 (ours 85.05 ± 2.65), 1.5 above 82.1: the recalled "
        "value fits the split the paper describes, not the code's {0}, {1,2}, ..., {7,8} this "
        "cell runs (nine classes, the first task a single one; the code cuts so since its first "
        "commit, 4af82d1). Its ± 1.5 is the code's 2·std/√20, a seed std of about 3.4, the "
        "bound. Sequax's own `er` (one mean over the batch and a replay from the whole buffer) "
        "gives 83.96 ± 3.95. `python -m evidence.torch_mir_check --mir_cells=smnist/er-500 "
        "--mir_seeds=$(seq -s, 0 19)` (variants: `--mir_data=reference`, `--mir_five_pairs`, "
        "`--mir_lr=0.05`), 2026-12-07, 2-core AMD EPYC CPU, about 2 s a seed; every figure in "
        "docs/reproductions/mir_evidence.md."
    ),
    "smnist/mir-500": (
        "0.39 past the bound (its ± 0.7 is 2·std/√20: a seed std of about 1.6, so the bound is "
        "2), ours 89.99 ± 1.68 over 20 seeds; not our implementation: the reference loop "
        "transcribed to plain PyTorch (`mir_replay` with `--compare_to_old_logits`, as "
        "Scripts/ER_experiments.sh runs it) on this cell's data and seeds gives 89.80 ± 5.65 "
        "(median 91; its seed 18 collapses to 66, as its ER run to 72), ours −0.19 from it "
        "(standard error 1.32). The flag is not the gap either: scored post − pre as ours, the "
        "same loop gives 89.45 ± 6.07; with each run's own 1010 examples per task 90.50 ± 1.40; "
        "at lr 0.05 88.75 ± 4.52. On the paper's five pairs it gives 86.95 ± 4.19 and ours "
        "86.81 ± 2.86, both within the bound of 87.6: as for ER-500, the recalled value fits the "
        "five-pair split, as does Avalanche's reproduction (ContinualAI/"
        "continual-learning-baselines, tests/target_results.csv at 4900462: 0.87, memory 500, "
        "five pairs). `python -m evidence.torch_mir_check --mir_cells=smnist/mir-500 "
        "--mir_seeds=$(seq -s, 0 19)` (variants: `--nomir_compare_to_old_logits`, "
        "`--mir_data=reference`, `--mir_five_pairs`, `--mir_lr=0.05`), 2026-12-07, 2-core AMD "
        "EPYC CPU, about 3 s a seed; docs/reproductions/mir_evidence.md."
    ),
}


def config(benchmark: str, method: str, buffer: int) -> ml_collections.ConfigDict:
    """The config of one cell: the reference script's run of ER (`rand_replay`) or ER-MIR."""
    require_cell(PUBLISHED, "MIR", (benchmark, method, buffer))
    scenario, options, num_tasks, lr, _ = BENCHMARKS[benchmark]
    config_ = common.base_config()
    config_.data.scenario = scenario
    config_.data.num_tasks = num_tasks
    config_.data.options = ml_collections.ConfigDict(options)
    config_.data.train_per_task = SAMPLES_PER_TASK
    config_.model = ml_collections.ConfigDict(
        dict(name="mlp", widths=(400, 400), dropout=0.0, init="torch")
    )
    # ER = rand_replay: MIR whose candidates are all replayed (see the module docstring).
    subsample = REPLAY_BATCH if method == "er" else SUBSAMPLE
    config_.algorithm = ml_collections.ConfigDict(
        dict(name="mir", capacity=buffer, replay_batch=REPLAY_BATCH, subsample=subsample, lr=lr)
    )
    config_.optimizer.lr = lr
    config_.training.batch_size = BATCH
    config_.training.epochs = 1
    return config_


def sequax_er(cell, config_: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The ER rows with sequax's `er`: one mean cross-entropy over the batch and 10 examples
    drawn from the whole buffer (the current task's included, from the first task on)."""
    if cell[1] == "er":
        config_.algorithm = ml_collections.ConfigDict(
            dict(name="er", capacity=cell[2], replay_batch=REPLAY_BATCH)
        )
    return config_


def five_pairs(cell, config_: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Split MNIST as the paper describes it, {0,1}, ..., {8,9}, instead of the reference
    code's {0}, {1,2}, ..., {7,8}."""
    if cell[0] == "smnist":
        config_.data.options = ml_collections.ConfigDict(dict(classes_per_task=2))
    return config_


VARIANTS = {
    "sequax_er": (
        "the ER rows run with sequax's `er` instead of the reference's rand_replay",
        sequax_er,
    ),
    "five_pairs": ("Split MNIST as {0,1}, ..., {8,9}, not the reference code's split", five_pairs),
}


def cells() -> list[tuple[str, str, int]]:
    """Every cell in table order (benchmark, method, buffer)."""
    return list(PUBLISHED)


def get_config_for(benchmark: str, arg: str | None):
    """The `get_config` of `smnist.py` and `pmnist.py`: arg is "METHOD,BUFFER[,local]"."""
    method, buffer, local = method_buffer_arg(benchmark, arg, "mir,500")
    config_ = config(benchmark, method, buffer)
    return common.shrink_local(config_) if local else config_
