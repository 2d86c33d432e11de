"""A plain-PyTorch transcription of the MIR reference loop (ER and ER-MIR) for the MIR MNIST cells.

Independent evidence for the MIR reproduction table (`configs/reproduce/mir/table.py`,
`python -m sequax.launch.reproduce --table=mir`): it runs the training loop of
optimass/Maximally_Interfered_Retrieval, read at its HEAD 35eda78 (2020-08-30; the files' last
changes: `er_main.py` 9587bc8, `mir.py` 4af82d1, `buffer.py` 423c8ed, `model.py` and `utils.py`
91b7383, `data.py` 1936945; `Scripts/ER_experiments.sh` 35eda78's Split MNIST runs) for
`--method rand_replay` (ER) and `--method mir_replay` (ER-MIR) on *our* data. Where our JAX
number differs from the published one, agreement of this with the published value points at our
implementation; agreement with ours points at the published number (or at the reference's
setting).

    python -m evidence.torch_mir_check --mir_cells=smnist/er-500,smnist/mir-500 \
        --mir_seeds=0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19

Hyper-parameters are read from the table's own cell config (`table.config(benchmark, method,
buffer)`): `optimizer.lr` (`--lr`), `algorithm.capacity` (`--mem_size` × 10 classes),
`algorithm.replay_batch` (`--buffer_batch_size`), `algorithm.subsample` (`--subsample`; the ER
cells' 10 = replay_batch means rand_replay), `training.batch_size`, `model.widths`, so the check
cannot drift from the table. Data (`--mir_data=ours`, the default): the scenario the table's
cell trains on (`build_scenario(config.data)`: Split MNIST {0}, {1,2}, {3,4}, {5,6}, {7,8}, the
same 1010 training examples of each task for every seed, each task's whole test set), inputs
uint8/255 flattened (`XYDataset`: `x.float() / 255.`, `source == 'mnist'`, no rescaling).
`--mir_data=reference`: the reference's draws instead: each task's whole training set, cut
95 % / 5 % once by a `randperm` seeded 0 (`make_valid_from_train`), then every run takes the
first 1010 of its own shuffle of the 95 % (so each run trains on its own 1010 examples).
Other variants, each a flag: `--nomir_compare_to_old_logits` (ER-MIR scored post - pre, as
our `mir`), `--mir_five_pairs` (the paper's {0,1}, ..., {8,9}: the table's
`--variant=five_pairs`), `--mir_lr=0.05` (the script's Split MNIST rate before e2d056d /
35eda78, 2020-08-30, "Fix lr to match experiments in paper"). Results and their commands:
docs/reproductions/mir_evidence.md.

Mapping (file -> here):
  * model.py `MLP(args, nf=400)`: Linear(784, 400), ReLU, Linear(400, 400), ReLU, `linear`
    Linear(400, 10), torch's default init -> `mlp`.
  * er_main.py: per run `np.random.seed(run)`, `torch.manual_seed(run)` (-> `RandomState(seed)`,
    `torch.manual_seed(seed)`), the model, one `SGD(lr)` for the whole run, `Buffer(args)`;
    per task the loader's batches (`shuffle=True, drop_last=True`, batch 10) until
    `sample_amt > samples_per_task` (101 batches of 10 for 1000), `retrieve_replay_update(...,
    rehearse=task > 0)` then `buffer.add_reservoir(data, target, None, task)`; after each task
    the test loaders of the tasks so far (batch 64, `shuffle=True`): the mean of per-batch
    accuracies, `np.round(·, 2)`; a run's final accuracy `np.round(mean of the last row, 2)`;
    forgetting: max over all rows (the final included) - final, mean over tasks but the last
    -> `run`, `evaluate`.
  * mir.py `retrieve_replay_update`: the incoming batch's mean CE, `zero_grad`, `backward`; no
    rehearsal: `step`; `mir_replay`: `buffer.sample(subsample, exclude_task=task,
    ret_ind=True)`, the virtual network θ - lr·g (utils.py `get_future_step_parameters`, here by
    `functional_call`), pre/post losses under `no_grad`, scores post - pre (with
    `--compare_to_old_logits`: post - min(pre, CE of `buffer.logits[subsample]`), the stored
    logits then overwritten at `subsample[updated]`, positions in the past-task subset, not
    buffer slots), the `buffer_batch_size` largest by `sort(descending=True)`; `rand_replay`:
    `buffer.sample(buffer_batch_size, exclude_task=task)`; the replayed examples' mean CE,
    `backward` (gradients add), `step` -> `Learner.observe`.
  * buffer.py `Buffer.add_reservoir` (fill in order; then one `uniform_(0, n_seen_so_far)` per
    example with n_seen_so_far counted before the batch, kept if below the size; stored logits
    are not touched) and `sample` (past-task examples among the filled slots, `np.random.choice`
    without replacement, all of them when fewer) -> `Buffer`.

Differences, none changing what is computed: the buffer stores flattened 784-vectors (the
reference's [1, 28, 28] are flattened by `MLP.return_hidden`); the virtual network is a
parameter dict, not a deep copy; the validation-split evaluation, which never changes training
(it draws its loader shuffles from torch's global state, so the sequence of later draws
differs, not their distribution), is not run. Besides the reference's metric, every run records
the exact accuracies (the fraction of each whole test set, argmax over the 10 logits) and ours
(argmax over the classes of the tasks seen so far, `table.py`), so the three can be compared.
Writes OUT/<benchmark>/<method>-<buffer>[-variant].json: per seed the accuracies, the matrix,
the forgetting and wall time; the summary beside ours (`--mir_ours_dir`, the table's workdir).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from absl import app, flags
from torch import nn
from torch.func import functional_call

from evidence.torch_der_check import as_tensors
from sequax.configs.reproduce.mir import table
from sequax.engine.build import build_scenario

SAMPLES_PER_TASK = 1000  # Scripts/ER_experiments.sh --samples_per_task 1000 (MNIST)
BATCH = 10  # er_main.py --batch_size default
EVAL_BATCH = 64  # data.py CLDataLoader: bs = 64 when not training
VALID_CUT = 0.95  # data.py make_valid_from_train(cut=0.95)
NUM_CLASSES = 10  # model.py MLP(num_classes=10); data.py args.n_classes


def cell_hyper(benchmark: str, method: str, buffer: int) -> dict:
    """The reference script's arguments of one cell, read from the table's cell config."""
    config = table.config(benchmark, method, buffer)
    algorithm, model, optimizer = config.algorithm, config.model, config.optimizer
    # What er_main.py fixes and the check assumes: one plain SGD, the MLP with torch's init,
    # the virtual step at the optimiser's rate, one pass of batch 10.
    assert algorithm.name == "mir" and model.name == "mlp" and model.init == "torch", (
        algorithm,
        model,
    )
    assert optimizer.name == "sgd" and not optimizer.momentum, optimizer
    assert not optimizer.weight_decay and optimizer.schedule == "constant", optimizer
    assert algorithm.lr == optimizer.lr and config.training.epochs == 1, (algorithm, optimizer)
    assert not model.dropout and len(set(model.widths)) == 1, model
    # er_main.py trains while `sample_amt <= samples_per_task`: 101 batches of 10 for 1000.
    assert config.data.train_per_task == (SAMPLES_PER_TASK // BATCH + 1) * BATCH, config.data
    assert config.training.batch_size == BATCH, config.training
    return dict(
        method="mir_replay" if algorithm.subsample > algorithm.replay_batch else "rand_replay",
        lr=float(optimizer.lr),
        mem_size=int(algorithm.capacity),
        buffer_batch_size=int(algorithm.replay_batch),
        subsample=int(algorithm.subsample),
        batch_size=int(config.training.batch_size),
        nf=int(model.widths[0]),
        train_per_task=int(config.data.train_per_task),
    )


def mlp(nf: int = 400) -> nn.Sequential:
    """model.py `MLP(args, nf=400)`: hidden (Linear, ReLU, Linear, ReLU) and `linear`, torch's
    default nn.Linear init."""
    return nn.Sequential(
        nn.Linear(784, nf), nn.ReLU(True), nn.Linear(nf, nf), nn.ReLU(True), nn.Linear(nf, 10)
    )


class Buffer:
    """buffer.py `Buffer` (no generator: `economy` 1): bx, by, bt and the stored logits
    (zeros), `mem_size` slots; `rng` is the reference's global numpy state."""

    def __init__(self, mem_size: int, rng: np.random.RandomState, input_size: int = 784):
        self.bx = torch.zeros(mem_size, input_size)
        self.by = torch.zeros(mem_size, dtype=torch.int64)
        self.bt = torch.zeros(mem_size, dtype=torch.int64)
        self.logits = torch.zeros(mem_size, NUM_CLASSES)
        self.current_index = self.n_seen_so_far = 0
        self.rng = rng

    def add_reservoir(self, x: torch.Tensor, y: torch.Tensor, t: int) -> None:
        """`add_reservoir(x, y, None, t)`: what still fits goes to the next slots; the rest draw
        `uniform_(0, n_seen_so_far)` (the count before the batch), kept below the size."""
        n_elem, size = x.size(0), self.bx.size(0)
        place_left = max(0, size - self.current_index)
        if place_left:
            offset = min(place_left, n_elem)
            self.bx[self.current_index : self.current_index + offset] = x[:offset]
            self.by[self.current_index : self.current_index + offset] = y[:offset]
            self.bt[self.current_index : self.current_index + offset] = t
            self.current_index += offset
            self.n_seen_so_far += offset
            if offset == n_elem:
                return
        x, y = x[place_left:], y[place_left:]
        indices = torch.FloatTensor(x.size(0)).uniform_(0, self.n_seen_so_far).long()
        idx_new_data = (indices < size).long().nonzero().squeeze(-1)
        idx_buffer = indices[idx_new_data]
        self.n_seen_so_far += x.size(0)
        if idx_buffer.numel() == 0:
            return
        self.bx[idx_buffer] = x[idx_new_data]
        self.by[idx_buffer] = y[idx_new_data]
        self.bt[idx_buffer] = t

    def sample(self, amt: int, exclude_task: int, ret_ind: bool = False):
        """`sample(amt, exclude_task)`: the filled slots of other tasks; all of them when fewer
        than `amt`, else `np.random.choice(n, amt, replace=False)` of them. `ret_ind`: the
        positions in that subset too."""
        valid = (self.bt[: self.current_index] != exclude_task).nonzero().squeeze(-1)
        bx, by, bt = self.bx[valid], self.by[valid], self.bt[valid]
        if bx.size(0) < amt:
            indices = torch.arange(bx.size(0))
        else:
            indices = torch.from_numpy(self.rng.choice(bx.size(0), amt, replace=False))
        out = (bx[indices], by[indices], bt[indices])
        return (*out, indices) if ret_ind else out


@torch.no_grad()
def mir_scores(
    net: nn.Module,
    lr: float,
    bx: torch.Tensor,
    by: torch.Tensor,
    old_logits: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """mir.py's retrieval scores of the candidates (bx, by), with `net`'s `.grad` holding the
    incoming batch's gradient: the virtual network θ - lr·g (utils.py
    `get_future_step_parameters`), post-step minus current loss; with `old_logits`
    (`--compare_to_old_logits`): post minus min(current, the stored logits' loss). Returns the
    scores, the current logits and (with `old_logits`) which candidates' stored logits to
    overwrite (`updated_inds`)."""
    virtual = {k: p.detach() - lr * p.grad for k, p in net.named_parameters()}
    logits_pre = net(bx)
    pre_loss = F.cross_entropy(logits_pre, by, reduction="none")
    post_loss = F.cross_entropy(functional_call(net, virtual, (bx,)), by, reduction="none")
    if old_logits is None:
        return post_loss - pre_loss, logits_pre, None
    old_loss = F.cross_entropy(old_logits, by, reduction="none")
    updated = (pre_loss < old_loss).nonzero().squeeze(1)
    return post_loss - torch.min(pre_loss, old_loss), logits_pre, updated


class Learner:
    """er_main.py's model, optimizer and buffer; `observe` is mir.py `retrieve_replay_update`."""

    def __init__(self, hp: dict, seed: int, compare_to_old_logits: bool):
        self.hp, self.compare = hp, compare_to_old_logits
        self.net = mlp(hp["nf"])
        self.opt = torch.optim.SGD(self.net.parameters(), lr=hp["lr"])
        self.buffer = Buffer(hp["mem_size"], np.random.RandomState(seed))

    def observe(self, x: torch.Tensor, y: torch.Tensor, task: int) -> None:
        """One step (`rehearse = task > 0`), then the batch offered to the reservoir."""
        hp, net, buffer = self.hp, self.net, self.buffer
        loss = F.cross_entropy(net(x), y)
        self.opt.zero_grad()
        loss.backward()
        if task > 0:
            updated = None
            if hp["method"] == "mir_replay":
                bx, by, _, subsample = buffer.sample(hp["subsample"], task, ret_ind=True)
                old = buffer.logits[subsample] if self.compare else None
                scores, logits_pre, updated = mir_scores(net, hp["lr"], bx, by, old)
                big_ind = scores.sort(descending=True)[1][: hp["buffer_batch_size"]]
                mem_x, mem_y = bx[big_ind], by[big_ind]
            else:  # rand_replay
                mem_x, mem_y, _ = buffer.sample(hp["buffer_batch_size"], task)
            F.cross_entropy(net(mem_x), mem_y).backward()
            if updated is not None:
                buffer.logits[subsample[updated]] = logits_pre[updated].clone()
        self.opt.step()
        buffer.add_reservoir(x, y, task)


@torch.no_grad()
def evaluate(net: nn.Module, tests: list, seen_classes: np.ndarray | None) -> dict:
    """er_main.py's evaluation of each task so far: test loader of batch 64, shuffled, the mean
    of per-batch accuracies rounded to 0.01 (`reference`); the fraction of the whole test set
    with the argmax over the 10 logits (`exact`) and over `seen_classes` (`ours`; None: all)."""
    out = dict(reference=[], exact=[], ours=[])
    mask = None if seen_classes is None else torch.from_numpy(~seen_classes)
    for images, labels in tests:
        x, y = as_tensors(images, labels)
        logits = net(x)
        correct = logits.argmax(1) == y
        batches = torch.randperm(len(y)).split(EVAL_BATCH)  # shuffle=True, last batch short
        out["reference"].append(
            float(np.round(np.mean([correct[b].float().mean().item() for b in batches]), 2))
        )
        out["exact"].append(correct.float().mean().item())
        if mask is not None:
            logits[:, mask] = -torch.inf
        out["ours"].append((logits.argmax(1) == y).float().mean().item())
    return out


def reference_draws(scenario, train_per_task: int) -> list:
    """data.py `make_valid_from_train`: each task's whole training set, permuted by a
    `randperm` (torch seeded 0 before the data are built), the first 95 % kept for training."""
    generator = torch.Generator().manual_seed(0)
    kept = []
    for t in range(scenario.num_tasks):
        images, labels = scenario.train(t)
        perm = torch.randperm(len(labels), generator=generator).numpy()[
            : int(len(labels) * VALID_CUT)
        ]
        kept.append((images[perm], labels[perm]))
    assert all(len(k[1]) >= train_per_task for k in kept)
    return kept


def run(
    scenario,
    seed: int,
    hp: dict,
    compare_to_old_logits: bool = True,
    train_sets: list | None = None,
) -> dict:
    """er_main.py's run over every task of `scenario` (or of `train_sets`, the reference's
    95 % cuts, each run taking its own first `train_per_task` of a shuffle). Accuracies in %."""
    torch.manual_seed(seed)
    learner = Learner(hp, seed, compare_to_old_logits)
    class_il = scenario.setting == "class"
    steps = hp["train_per_task"] // hp["batch_size"]  # 1010 // 10: the loop's 101 batches
    rows = dict(reference=[], exact=[], ours=[])
    tests = []
    start = time.perf_counter()
    for task in range(scenario.num_tasks):
        images, labels = train_sets[task] if train_sets else scenario.train(task)
        x, y = as_tensors(images, labels)
        learner.net.train()
        order = torch.randperm(len(y))  # DataLoader(shuffle=True, drop_last=True)
        for index in order[: steps * hp["batch_size"]].split(hp["batch_size"]):
            learner.observe(x[index], y[index], task)
        learner.net.eval()
        tests.append(scenario.test(task))
        seen = scenario.task_classes[: task + 1].any(0) if class_il else None
        for key, value in evaluate(learner.net, tests, seen).items():
            rows[key].append(value)
    T = scenario.num_tasks
    final_row = np.asarray(rows["reference"][-1])
    matrix = np.zeros((T, T))  # LOG[run]['test']['acc'][task_t, task], zeros before training
    for task, row in enumerate(rows["reference"]):
        matrix[: task + 1, task] = row
    forgetting = matrix.max(1) - matrix[:, -1]
    return dict(
        final=100.0 * float(np.round(np.mean(final_row), 2)),  # er_main.py 'final_acc'
        final_exact=100.0 * float(np.mean(rows["exact"][-1])),
        final_ours_eval=100.0 * float(np.mean(rows["ours"][-1])),
        forgetting=float(np.round(np.mean(forgetting[:-1]), 2)),  # 'final_forget'
        matrix_exact=[[100.0 * a for a in row] for row in rows["exact"]],
        wall_s=time.perf_counter() - start,
    )


def ours(ours_dir: str, cell: str) -> dict | None:
    """Our table's result of `cell` (`reproduce`'s WORKDIR/mir/<cell>/summary.json), if there:
    class-IL accuracy in %, mean and std over its seeds."""
    path = Path(ours_dir) / cell / "summary.json"
    if not ours_dir or not path.is_file():
        return None
    row = json.loads(path.read_text())["table"][0]
    mean, std = row["class_il" if "class_il" in row else "domain_il"]["acc"]
    return dict(mean=100.0 * mean, std=100.0 * std, seeds=len(row["seeds"]), path=str(path))


_CELLS = flags.DEFINE_list(
    "mir_cells",
    ["smnist/er-500"],
    "Cells of the MIR table: {smnist,pmnist}/{er,mir}-{200,500,1000}.",
)
_SEEDS = flags.DEFINE_list("mir_seeds", ["0", "1", "2"], "Run seeds (er_main.py's `run`).")
_OUT = flags.DEFINE_string(
    "mir_out_dir", "runs/torch_mir_check", "Writes MIR_OUT_DIR/<benchmark>/<method>-<buffer>.json."
)
_COMPARE = flags.DEFINE_bool(
    "mir_compare_to_old_logits",
    True,
    "ER-MIR with --compare_to_old_logits, as "
    "Scripts/ER_experiments.sh runs it on MNIST; False: scores post - pre (ours).",
)
_DATA = flags.DEFINE_enum(
    "mir_data",
    "ours",
    ["ours", "reference"],
    "ours: the table cell's scenario (one "
    "1010-example subset per task for every seed); reference: each run its own 1010 of the 95 % "
    "cut of the whole task (data.py make_valid_from_train, the loader's shuffle).",
)
_FIVE_PAIRS = flags.DEFINE_bool(
    "mir_five_pairs",
    False,
    "Split MNIST as the paper describes it, {0,1}, ..., "
    "{8,9} (the table's `--variant=five_pairs`), not the reference code's {0}, {1,2}, ..., {7,8}.",
)
_LR = flags.DEFINE_float(
    "mir_lr",
    0.0,
    "Another --lr (the real and the virtual step; 0: the table's). "
    "Scripts/ER_experiments.sh ran Split MNIST at 0.05 until e2d056d/35eda78 set 0.1.",
)
_OURS_DIR = flags.DEFINE_string(
    "mir_ours_dir",
    "/tmp/repro/mir",
    "The table's results (reproduce's WORKDIR/mir), to print ours.",
)


def variant_suffix(
    method: str, compare: bool, data: str, five_pairs: bool = False, lr: float = 0.0
) -> str:
    """'' for the reference's loop on our data; else what differs."""
    parts = (["no_old_logits"] if method == "mir_replay" and not compare else []) + (
        ["reference_data"] if data == "reference" else []
    )
    parts += (["five_pairs"] if five_pairs else []) + ([f"lr{lr:g}"] if lr else [])
    return "".join(f"-{p}" for p in parts)


def summarise(runs: list) -> dict:
    summary = {}
    for key in ("final", "final_exact", "final_ours_eval", "forgetting"):
        values = [r[key] for r in runs]
        summary[key] = dict(
            mean=float(np.mean(values)),
            std_ddof1=float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            pm_reference=float(2 * np.std(values) / np.sqrt(len(values))),  # er_main.py's ±
        )
    return summary


def main(argv):
    del argv
    torch.set_num_threads(1)
    seeds = [int(s) for s in _SEEDS.value]
    for cell in _CELLS.value:
        benchmark, name = cell.split("/")
        method, _, buffer = name.partition("-")
        hp = cell_hyper(benchmark, method, int(buffer))
        hp["lr"] = _LR.value or hp["lr"]
        config = table.config(benchmark, method, int(buffer))
        if _FIVE_PAIRS.value:  # the table's variant: data options only
            config = table.five_pairs((benchmark, method, int(buffer)), config)
        if _DATA.value == "reference":
            config.data.train_per_task = 0  # every training example of each task
        scenario = build_scenario(config.data)
        train_sets = (
            reference_draws(scenario, hp["train_per_task"]) if _DATA.value == "reference" else None
        )
        suffix = variant_suffix(
            hp["method"], _COMPARE.value, _DATA.value, _FIVE_PAIRS.value, _LR.value
        )
        # reproduce writes a variant's cells to WORKDIR/<table>-<variant>.
        ours_dir = _OURS_DIR.value + (
            "-five_pairs" if _FIVE_PAIRS.value and _OURS_DIR.value else ""
        )
        path = Path(_OUT.value) / benchmark / f"{name}{suffix}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        published = table.PUBLISHED[(benchmark, method, int(buffer))]
        runs = []
        for seed in seeds:
            result = dict(seed=seed, **run(scenario, seed, hp, _COMPARE.value, train_sets))
            runs.append(result)
            print(
                f"{cell}{suffix} seed {seed}: {result['final']:.0f} (exact "
                f"{result['final_exact']:.2f}, our evaluation {result['final_ours_eval']:.2f}), "
                f"forgetting {result['forgetting']:.2f}  ({result['wall_s']:.0f} s)",
                flush=True,
            )
            path.write_text(  # rewritten after every seed: a cut run keeps its seeds
                json.dumps(
                    dict(
                        cell=cell,
                        hyper=hp,
                        compare_to_old_logits=_COMPARE.value,
                        data=_DATA.value,
                        five_pairs=_FIVE_PAIRS.value,
                        published=published,
                        ours=ours(ours_dir, cell),
                        summary=summarise(runs),
                        runs=runs,
                    )
                )
            )
        summary, table_row = summarise(runs), ours(ours_dir, cell)
        print(
            f"{cell}{suffix}: "
            + ", ".join(f"{k} {v['mean']:.2f} ± {v['std_ddof1']:.2f}" for k, v in summary.items())
            + (f"; ours {table_row['mean']:.2f} ± {table_row['std']:.2f}" if table_row else "")
            + f"; published {next(iter(published.values()))}",
            flush=True,
        )


if __name__ == "__main__":
    app.run(main)
