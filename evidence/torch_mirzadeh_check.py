"""A plain-PyTorch transcription of Stable SGD's reference loop for the Mirzadeh MNIST cells.

Independent evidence for the Mirzadeh reproduction table (`configs/reproduce/mirzadeh/table.py`,
`python -m sequax.launch.reproduce --table=mirzadeh`): it runs the training loop of
imirzadeh/stable-continual-learning @ 3c4aeca, `stable_sgd/main.py`, for naive SGD and Stable SGD
on Permuted and Rotated MNIST (20 tasks, MLP 784-256-256-10), on *our* data. Where our JAX number
differs from the published one, agreement of this with the published value points at our
implementation; agreement with ours points at the published number.

    python -m evidence.torch_mirzadeh_check --mz_cells=pmnist/naive,rmnist/stable_sgd \
        --mz_seeds=0,1,2

Hyper-parameters are read from the table's own cell config (`table.config(benchmark, method)`):
`optimizer.lr` (args.lr), `algorithm.decay` (args.gamma; 1.0 for naive, which has none),
`optimizer.momentum` (main.py's hard-coded 0.8), `training.batch_size`, `model.dropout`,
`model.widths`, `training.epochs`; so the check cannot drift from the table. Seed s trains on
the scenario our run with seed s sees: the cells set `data.draws_per_run=True`, so
`torch_der_check.cell_scenarios` draws the permutations / angles from `draw_seed(data.seed, s)`
(`run_scenarios`, as the loop does for the vmapped seeds 0, 1, 2 of `reproduce`). Seed s also
seeds torch (init, dropout masks), which cannot match our JAX run, only be distributed alike.
Inputs are uint8/255, flattened (ToTensor). Writes OUT/<benchmark>/<method>[-variant].json: per
seed the final average accuracy, the accuracy matrix (%), both forgettings, the per-task
learning rates and wall time.

Mapping (file @ 3c4aeca -> here): models.py `MLP` -> `MLP` (torch default nn.Linear init,
dropout after each hidden ReLU); main.py `run`: `lr = max(args.lr * args.gamma ** task_id,
0.00005)` with 1-based task ids -> `task_lr`; `torch.optim.SGD(lr, momentum=0.8)` built anew
for every task (and every epoch) -> `train_task`; `train_single_epoch` (net.train(),
CrossEntropyLoss) -> `train_task`; `eval_single_epoch` (net.eval(), accuracy in %) ->
`torch_der_check.evaluate`; utils.py `end_experiment` -> `mirzadeh_forgetting` and `final`;
utils.py `init_experiment` `torch.manual_seed(seed)` -> `run`.

Where the reference differs from our engine, each a flag here (default: the reference):
- data_utils.py's loaders use `shuffle=False`: every task is fed in MNIST's file order, the
  same order for every task and seed; ours shuffles per epoch (`--mz_shuffle`: a torch
  `randperm` per epoch, what `RandomSampler` draws).
- the loaders keep the last partial batch (60,000 = 937 x 64 + 32; 6,000 x 10 exactly); ours
  runs size // batch steps (`--mz_drop_last`).
- models.py applies `nn.functional.dropout(out, p)`, whose `training` argument defaults to
  True: `net.eval()` does not turn it off, so the reference *evaluates with dropout on*
  (Stable SGD: p 0.25; naive: p 0, no effect). Ours evaluates deterministically
  (`--nomz_eval_dropout`).
- the reference evaluates only the tasks seen so far (a lower-triangular matrix, zeros above);
  our forgetting (`sequax.engine.metrics.average_forgetting`, see `table.FORGETTING_DEFINITION`)
  also takes the rows before a task was trained into its max, so by default every task is
  evaluated after every task (`--nomz_full_matrix`: only the seen ones, as the reference; ours
  then is not computed). Evaluation never changes training except through the torch RNG that
  eval-time dropout draws from.
- the floor: the reference's absolute 5e-5 (ours: `StableSGD.min_factor` 5e-4 x lr 0.1, equal).
The data differ from the reference's as our scenarios do (Rotated: scipy nearest rotation of
the uint8 image, not torchvision's PIL rotate; permutations / angles numpy-seeded; the
reference's permutations come from an unseeded `np.random.RandomState()`).
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

from evidence.torch_der_check import as_tensors, cell_scenarios, evaluate
from sequax.configs.reproduce.mirzadeh import table
from sequax.engine.metrics import average_forgetting

LR_FLOOR = 0.00005  # main.py: lr = max(args.lr * args.gamma ** task_id, 0.00005)
MOMENTUM = 0.8  # main.py: torch.optim.SGD(model.parameters(), lr=lr, momentum=0.8)
METHODS = ("naive", "stable_sgd")


def task_lr(lr: float, gamma: float, task_id: int) -> float:
    """main.py: task `task_id`'s learning rate, task ids from 1 (the first task trains at lr·γ)."""
    if task_id < 1:
        raise ValueError(f"task ids are 1-based, got {task_id}")
    return max(lr * gamma**task_id, LR_FLOOR)


def cell_hyper(benchmark: str, method: str) -> dict:
    """The reference script's arguments of one cell, read from the table's cell config."""
    if method not in METHODS:
        raise ValueError(f"no reference loop for {benchmark}/{method}; known: {', '.join(METHODS)}")
    config = table.config(benchmark, method)
    algorithm, model, optimizer = config.algorithm, config.model, config.optimizer
    # What main.py fixes and the check assumes: a new SGD (momentum 0.8) per task, no weight
    # decay, the MLP with torch's init, no algorithm but the decay, its exponent from 1.
    assert algorithm.name == method and model.name == "mlp" and model.init == "torch", (
        algorithm,
        model,
    )
    assert (
        optimizer.name == "sgd" and optimizer.momentum == MOMENTUM and optimizer.reset_each_task
    ), optimizer
    assert not optimizer.get("weight_decay", 0.0) and algorithm.get("offset", 1) == 1, (
        optimizer,
        algorithm,
    )
    return dict(
        lr=float(optimizer.lr),
        gamma=float(algorithm.get("decay", 1.0)),
        momentum=float(optimizer.momentum),
        batch_size=int(config.training.batch_size),
        dropout=float(model.dropout),
        widths=tuple(int(w) for w in model.widths),
        epochs=int(config.training.epochs),
    )


class MLP(nn.Module):
    """models.py `MLP(hiddens, {'dropout': p})`: W1, ReLU, dropout, W2, ReLU, dropout, W3, torch's
    default init. `eval_dropout`: the reference's `nn.functional.dropout(out, p)` (training=True
    by default) drops in eval mode too; False drops in train mode only."""

    def __init__(self, widths: tuple = (256, 256), dropout: float = 0.0, eval_dropout: bool = True):
        super().__init__()
        assert len(widths) == 2 and widths[0] == widths[1], widths  # main.py: one `hiddens`
        self.W1, self.W2, self.W3 = (
            nn.Linear(784, widths[0]),
            nn.Linear(widths[0], widths[1]),
            nn.Linear(widths[1], 10),
        )
        self.dropout_p, self.eval_dropout = dropout, eval_dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        drop = self.training or self.eval_dropout
        out = F.dropout(F.relu(self.W1(x.view(-1, 784))), p=self.dropout_p, training=drop)
        out = F.dropout(F.relu(self.W2(out)), p=self.dropout_p, training=drop)
        return self.W3(out)


def train_task(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    lr: float,
    hp: dict,
    shuffle: bool = False,
    drop_last: bool = False,
) -> torch.optim.SGD:
    """main.py's epochs of one task: per epoch a new SGD(lr, momentum 0.8) (the momentum starts
    from zero every task), then `train_single_epoch` over the loader's batches. Returns the last
    optimizer."""
    criterion, batch_size = nn.CrossEntropyLoss(), hp["batch_size"]
    for _ in range(hp["epochs"]):
        optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=hp["momentum"])
        net.train()
        order = (
            torch.randperm(len(y)) if shuffle else torch.arange(len(y))
        )  # shuffle=False: file order
        batches = order.split(batch_size)
        if drop_last and len(batches[-1]) < batch_size:
            batches = batches[:-1]
        for index in batches:
            optimizer.zero_grad()
            criterion(net(x[index]), y[index]).backward()
            optimizer.step()
    return optimizer


def mirzadeh_forgetting(matrix) -> float:
    """utils.py `end_experiment`: mean over tasks j < T-1 of (max of task j's accuracies from
    its own training on, the final one included) - final accuracy, / 100 (a fraction)."""
    R = np.asarray(matrix, np.float64)
    T = len(R)
    return (
        float(np.mean([R[j:, j].max() - R[-1, j] for j in range(T - 1)]) / 100.0) if T > 1 else 0.0
    )


def run(
    scenario,
    seed: int,
    hp: dict,
    shuffle: bool = False,
    drop_last: bool = False,
    eval_dropout: bool = True,
    full_matrix: bool = True,
    verbose: bool = False,
) -> dict:
    """main.py `run` over every task of `scenario`: lr, a new optimizer, one epoch, evaluation
    on the tasks so far (`full_matrix`: on every task). Accuracies in %."""
    torch.manual_seed(seed)  # utils.py init_experiment, before the model is built
    net = MLP(hp["widths"], hp["dropout"], eval_dropout)
    T = scenario.num_tasks
    tests = [scenario.test(t) for t in range(T)] if full_matrix else []
    matrix, lrs, train_s, eval_s = [], [], 0.0, 0.0
    for task_id in range(1, T + 1):
        lr = task_lr(hp["lr"], hp["gamma"], task_id)
        lrs.append(lr)
        start = time.perf_counter()
        x, y = as_tensors(*scenario.train(task_id - 1))
        train_task(net, x, y, lr, hp, shuffle, drop_last)
        mid = time.perf_counter()
        train_s += mid - start
        if not full_matrix:
            tests.append(scenario.test(task_id - 1))
        net.eval()
        accs, _ = evaluate(net, tests)
        eval_s += time.perf_counter() - mid
        matrix.append(accs)
        if verbose:
            print(
                f"  task {task_id}/{T} lr {lr:.3g}: acc on task {task_id} {accs[task_id - 1]:.2f}, "
                f"mean so far {np.mean(accs[:task_id]):.2f}",
                flush=True,
            )
    seen = [row[: i + 1] for i, row in enumerate(matrix)]
    result = dict(
        final=float(np.mean(matrix[-1])),
        matrix=matrix,
        lrs=lrs,
        forgetting_mirzadeh=mirzadeh_forgetting([r + [0.0] * (T - len(r)) for r in seen]),
    )
    if full_matrix:
        result["forgetting_ours"] = average_forgetting(np.asarray(matrix) / 100.0)
    result.update(train_s=train_s, eval_s=eval_s)
    return result


_CELLS = flags.DEFINE_list(
    "mz_cells", ["pmnist/stable_sgd"], "Cells: {p,r}mnist/{naive,stable_sgd}."
)
_SEEDS = flags.DEFINE_list(
    "mz_seeds", ["0", "1", "2"], "Run seeds (the draws of our runs with these seeds)."
)
_OUT = flags.DEFINE_string(
    "mz_out_dir", "runs/torch_mirzadeh_check", "Writes MZ_OUT_DIR/<benchmark>/<method>.json."
)
_SHUFFLE = flags.DEFINE_bool(
    "mz_shuffle", False, "Shuffle each epoch (ours); the reference: shuffle=False."
)
_DROP_LAST = flags.DEFINE_bool(
    "mz_drop_last", False, "Drop the last partial batch (ours); the reference keeps it."
)
_EVAL_DROPOUT = flags.DEFINE_bool(
    "mz_eval_dropout",
    True,
    "Dropout on at evaluation too, as the reference's "
    "F.dropout(training=True default) does; False: eval mode is deterministic (ours).",
)
_FULL_MATRIX = flags.DEFINE_bool(
    "mz_full_matrix",
    True,
    "Evaluate every task after every task (needed for our "
    "forgetting); False: the tasks seen so far, as the reference.",
)
_VERBOSE = flags.DEFINE_bool("mz_verbose", False, "Print every task's accuracy.")


def variant_suffix(shuffle: bool, drop_last: bool, eval_dropout: bool, hp: dict) -> str:
    """'' for the reference's loop; else what differs (eval dropout matters only with dropout)."""
    parts = (["shuffle"] if shuffle else []) + (["drop_last"] if drop_last else [])
    parts += ["no_eval_dropout"] if not eval_dropout and hp["dropout"] > 0 else []
    return "".join(f"-{p}" for p in parts)


def main(argv):
    del argv
    torch.set_num_threads(1)
    seeds = [int(s) for s in _SEEDS.value]
    for cell in _CELLS.value:
        benchmark, method = cell.split("/")
        hp = cell_hyper(benchmark, method)
        scenarios = cell_scenarios(benchmark, seeds, table.config(benchmark, method))
        suffix = variant_suffix(_SHUFFLE.value, _DROP_LAST.value, _EVAL_DROPOUT.value, hp)
        path = Path(_OUT.value) / benchmark / f"{method}{suffix}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        runs = []
        for seed, scenario in zip(seeds, scenarios):
            start = time.perf_counter()
            result = run(
                scenario,
                seed,
                hp,
                _SHUFFLE.value,
                _DROP_LAST.value,
                _EVAL_DROPOUT.value,
                _FULL_MATRIX.value,
                _VERBOSE.value,
            )
            result.update(seed=seed, wall_s=time.perf_counter() - start)
            runs.append(result)
            ours = (
                f", forgetting ours {result['forgetting_ours']:.3f}"
                if "forgetting_ours" in result
                else ""
            )
            print(
                f"{cell} seed {seed}: {result['final']:.2f}, forgetting (Mirzadeh) "
                f"{result['forgetting_mirzadeh']:.3f}{ours}  ({result['wall_s']:.0f} s, eval "
                f"{result['eval_s']:.0f} s)",
                flush=True,
            )
            summary = {}
            for key in ("final", "forgetting_mirzadeh", "forgetting_ours"):
                if key in runs[0]:
                    values = [r[key] for r in runs]
                    summary[key] = dict(
                        mean=float(np.mean(values)),
                        std_ddof1=float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                    )
            path.write_text(
                json.dumps(
                    dict(  # rewritten after every seed: a cut run keeps its seeds
                        cell=cell,
                        hyper=hp,
                        lr_floor=LR_FLOOR,
                        shuffle=_SHUFFLE.value,
                        drop_last=_DROP_LAST.value,
                        eval_dropout=_EVAL_DROPOUT.value,
                        full_matrix=_FULL_MATRIX.value,
                        published=table.PUBLISHED[(benchmark, method, None)],
                        published_forgetting=table.FORGETTING.get((benchmark, method, None)),
                        forgetting_definition=table.FORGETTING_DEFINITION,
                        summary=summary,
                        runs=runs,
                    )
                )
            )
        print(
            f"{cell}: "
            + ", ".join(f"{k} {v['mean']:.3f} ± {v['std_ddof1']:.3f}" for k, v in summary.items()),
            flush=True,
        )


if __name__ == "__main__":
    app.run(main)
