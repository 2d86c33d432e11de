"""A plain-PyTorch transcription of mammoth's 2020 training loop for DER MNIST cells.

Independent evidence for Table 2 of the DER paper (Buzzega et al., NeurIPS 2020): it runs the
loop of aimagelab/mammoth @ 7ab9db97 for sgd, oEWC (`ewc_on`), SI and ER on P-/R-MNIST and LwF
on Seq-MNIST, on *our* data. Where our JAX number differs from the published one, agreement of
this with the published value points at our implementation; agreement with ours points at the
published number (or its data draws).

    python -m evidence.torch_der_check --cells=rmnist/sgd,rmnist/er-200,smnist/lwf --seeds=0,1,2

Seed s trains on the scenario our run with seed s sees: `run_scenarios` on the cell's config
(`configs/reproduce/der/table.py`, `data.draws_per_run=True`), so the permutations / angles come
from `draw_seed(data.seed, s)` (Seq-MNIST: the same tasks, classes 0-1, 2-3, ..., for every
seed); inputs are uint8/255, flattened. Seed s also seeds torch (init, batch order) and the
reservoir's numpy state, which cannot match our JAX run, only be distributed alike. Writes
OUT/<benchmark>/<method>[-<buffer>].json: per seed the final average accuracy (Seq-MNIST:
class-IL and task-IL), accuracy matrices, wall time.

Mapping (mammoth file @ 7ab9db97 -> here): backbone/MNISTMLP.py and backbone/__init__.py
`xavier` -> `mnist_mlp`; models/utils/continual_model.py `SGD(params, lr)` -> `Learner.opt`;
models/{sgd,ewc_on,si,er,lwf}.py `observe` / `end_task` / `begin_task` -> the `Learner` methods
(lwf.py `smooth`, `modified_kl_div` and buffer.py `reservoir`, `Buffer` keep their names; the
global numpy state is a `RandomState(seed)`); datasets/*.py `DataLoader(shuffle=True)` -> the
`randperm` batches of `run`; utils/training.py `train` / `evaluate` / `mask_classes` -> `run` /
`evaluate`; utils/best_args.py -> `BEST_ARGS`. Differences, none changing what is computed: the
Fisher's per-example gradients come from `torch.func.vmap(grad)` over chunks (equal up to float
summation order); batches are slices of one `randperm` (what `RandomSampler` draws); evaluation
and LwF's old logits run in chunks of 10,000 / one pass. The data differ from mammoth's only as
our scenarios do (R-MNIST: scipy nearest rotation of the uint8 image, not torchvision's PIL
rotate; the draws are numpy-seeded).

`--nobegin_task` runs utils/training.py @ 7ab9db97 as written: its `train` never calls
`model.begin_task` (later versions do), so LwF's `current_task` stays 0, its CE mask
`eye[0 * cpt - 1]` is every class and no logits are attached: SGD plus `wd_reg * Σθ²`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from absl import app, flags
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from sequax.configs.reproduce.der import table
from sequax.engine.build import build_scenario, run_scenarios

# mammoth utils/best_args.py @ 7ab9db97: 'perm-mnist' / 'rot-mnist', batch_size 128, n_epochs 1 (er:
# every buffer size); 'seq-mnist' lwf: softmax_temp 2 (unused), n_epochs 1.
BEST_ARGS = {
    ("pmnist", "sgd"): dict(lr=0.2),
    ("rmnist", "sgd"): dict(lr=0.2),
    ("pmnist", "oewc"): dict(lr=0.1, e_lambda=0.7, gamma=1.0),
    ("rmnist", "oewc"): dict(lr=0.1, e_lambda=0.7, gamma=1.0),
    ("pmnist", "si"): dict(lr=0.1, c=0.5, xi=1.0),
    ("rmnist", "si"): dict(lr=0.1, c=1.0, xi=1.0),
    ("pmnist", "er"): dict(lr=0.2, minibatch_size=128),
    ("rmnist", "er"): dict(lr=0.2, minibatch_size=128),
    ("smnist", "lwf"): dict(lr=0.03, alpha=1.0, wd_reg=0.0005, batch_size=10),
}
BATCH_SIZE = 128  # perm-/rot-mnist
CLASSES_PER_TASK = 2  # seq_mnist.py N_CLASSES_PER_TASK


def mnist_mlp() -> nn.Module:
    """MNISTMLP(784, 10): fc1, ReLU, fc2, ReLU, classifier; mammoth's `xavier`: weights
    U(-a, a), a = sqrt(3) * sqrt(2 / (fan_in + fan_out)), biases 0."""
    net = nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 100),
        nn.ReLU(),
        nn.Linear(100, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )
    for m in (m for m in net if isinstance(m, nn.Linear)):
        m.weight.data.uniform_(-(a := math.sqrt(3.0) * math.sqrt(2.0 / sum(m.weight.shape))), a)
        m.bias.data.fill_(0.0)
    return net


def fisher(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, denominator: int, chunk: int = 256
) -> list:
    """ewc_on.py `end_task`: sum over examples of p(y|x) * (d log p(y|x) / dθ)², / `denominator`
    (mammoth: len(train_loader) * batch_size). Per-example gradients by vmap(grad)."""
    params = {k: v.detach() for k, v in net.named_parameters()}

    def log_likelihood(p, xi, yi):
        return -F.nll_loss(F.log_softmax(functional_call(net, p, (xi[None],)), dim=1), yi[None])

    per_example = vmap(grad_and_value(log_likelihood), in_dims=(None, 0, 0))
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    for s in range(0, len(y), chunk):
        grads, log_p = per_example(params, x[s : s + chunk], y[s : s + chunk])
        weight = log_p.exp()  # exp_cond_prob, a constant weight
        for k in total:
            total[k] += torch.einsum("b,b...->...", weight, grads[k] ** 2)
    return [total[k] / denominator for k, _ in net.named_parameters()]


def reservoir(num_seen_examples: int, buffer_size: int, rng: np.random.RandomState) -> int:
    """buffer.py `reservoir`: the slot of the next example, or -1 (not stored)."""
    if num_seen_examples < buffer_size:
        return num_seen_examples
    rand = rng.randint(0, num_seen_examples + 1)
    return rand if rand < buffer_size else -1


class Buffer:
    """buffer.py `Buffer` (mode 'reservoir'), examples and labels; `rng`: mammoth's global
    numpy state."""

    def __init__(self, buffer_size: int, rng: np.random.RandomState):
        self.buffer_size, self.rng, self.num_seen_examples = buffer_size, rng, 0
        self.examples = self.labels = None

    def add_data(self, examples: torch.Tensor, labels: torch.Tensor) -> None:
        if self.examples is None:  # init_tensors: zeros, float32 examples, int64 labels
            self.examples = torch.zeros((self.buffer_size, *examples.shape[1:]))
            self.labels = torch.zeros(self.buffer_size, dtype=torch.int64)
        for i in range(len(examples)):
            index = reservoir(self.num_seen_examples, self.buffer_size, self.rng)
            self.num_seen_examples += 1
            if index >= 0:
                self.examples[index], self.labels[index] = examples[i], labels[i]

    def get_data(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:  # uniform, no replacement
        n = min(self.num_seen_examples, self.buffer_size)
        choice = self.rng.choice(n, size=min(size, n), replace=False)
        return self.examples[choice], self.labels[choice]


def smooth(logits: torch.Tensor, temp: float, dim: int) -> torch.Tensor:
    """lwf.py `smooth` (applied to probabilities there): p^(1/T) renormalised."""
    log = logits ** (1 / temp)
    return log / torch.sum(log, dim).unsqueeze(1)


def modified_kl_div(
    old: torch.Tensor, new: torch.Tensor
) -> torch.Tensor:  # -mean_b Σ_c old log new
    return -torch.mean(torch.sum(old * torch.log(new), 1))


class Learner:
    """mammoth's ContinualModel subclasses sgd / ewc_on / si / er / lwf, on flat parameter lists."""

    def __init__(self, method: str, net: nn.Module, hp: dict, seed: int = 0):
        self.method, self.net, self.hp = method, net, hp
        self.params = list(net.parameters())
        self.opt = torch.optim.SGD(self.params, lr=hp["lr"])  # continual_model.py: no momentum
        self.weights = None  # oEWC's fish / SI's big_omega (None until the first end_task)
        # ewc_on: checkpoint None until end_task; si: checkpoint = the initial parameters.
        self.checkpoint = [p.detach().clone() for p in self.params] if method == "si" else None
        self.small_omega = [torch.zeros_like(p) for p in self.params]
        self.buffer = (
            Buffer(hp["buffer_size"], np.random.RandomState(seed)) if method == "er" else None
        )
        nc = net[-1].out_features  # lwf: N_TASKS * cpt
        self.eye, self.current_task, self.old_logits = (
            torch.tril(torch.ones((nc, nc))).bool(),
            0,
            None,
        )

    def penalty(self) -> torch.Tensor:
        if self.weights is None:
            return torch.tensor(0.0)
        return sum(
            (w * (p - c) ** 2).sum() for w, p, c in zip(self.weights, self.params, self.checkpoint)
        )

    def lwf_loss(
        self, outputs: torch.Tensor, y: torch.Tensor, logits: torch.Tensor | None
    ) -> torch.Tensor:
        """lwf.py `observe`: CE over the classes seen so far, the old classes' distillation (T = 2
        hard-coded there), `wd_reg * Σθ²` (the 2020 code's weight decay, a loss term)."""
        cpt = CLASSES_PER_TASK
        loss = F.cross_entropy(outputs[:, self.eye[self.current_task * cpt - 1]], y)
        if logits is not None:
            mask = self.eye[(self.current_task - 1) * cpt - 1]
            loss = loss + self.hp["alpha"] * modified_kl_div(
                smooth(F.softmax(logits[:, mask], 1), 2, 1),
                smooth(F.softmax(outputs[:, mask], 1), 2, 1),
            )
        return loss + self.hp["wd_reg"] * sum((p**2).sum() for p in self.params)

    def begin_task(self, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> None:
        """lwf.py `begin_task`: from the second task, one epoch (n_epochs) of SGD on the
        classifier alone, features under no_grad, CE over the new task's classes; then the old
        logits of the task's examples, once, by the whole network in eval mode."""
        self.net.eval()
        if self.current_task > 0:
            features, classifier, cpt = self.net[:-1], self.net[-1], CLASSES_PER_TASK
            opt = torch.optim.SGD(classifier.parameters(), lr=self.hp["lr"])
            mask = (
                self.eye[(self.current_task + 1) * cpt - 1] ^ self.eye[self.current_task * cpt - 1]
            )
            for index in torch.randperm(len(y)).split(batch_size):  # dataset.train_loader
                opt.zero_grad()
                with torch.no_grad():
                    feats = features(x[index])
                F.cross_entropy(
                    classifier(feats)[:, mask], y[index] - self.current_task * cpt
                ).backward()
                opt.step()
            with torch.no_grad():
                self.old_logits = self.net(x)
        self.net.train()
        self.current_task += 1

    def observe(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None) -> float:
        """One step on a batch; `index`: its rows in the task's data (LwF's attached logits)."""
        real_batch_size = len(y)
        if self.buffer is not None and self.buffer.num_seen_examples:  # er.py: + a replayed batch
            buf_x, buf_y = self.buffer.get_data(self.hp["minibatch_size"])
            x, y = torch.cat((x, buf_x)), torch.cat((y, buf_y))
        self.opt.zero_grad()
        if self.method == "lwf":
            loss = self.lwf_loss(
                self.net(x), y, None if self.old_logits is None else self.old_logits[index]
            )
        else:
            loss = F.cross_entropy(self.net(x), y)
        if self.method in ("oewc", "si"):  # ewc_on: + e_lambda * penalty; si: + c * penalty
            loss = loss + self.hp["e_lambda" if self.method == "oewc" else "c"] * self.penalty()
        loss.backward()
        if self.method == "si":
            nn.utils.clip_grad_value_(self.params, 1)
        self.opt.step()
        for w, p in zip(self.small_omega if self.method == "si" else (), self.params):
            w += self.hp["lr"] * p.grad.detach() ** 2  # si: small_omega += lr * (clipped grad)²
        if self.buffer is not None:  # er.py: the current (not augmented) batch, after the step
            self.buffer.add_data(x[:real_batch_size], y[:real_batch_size])
        return loss.item()

    def end_task(self, x: torch.Tensor, y: torch.Tensor) -> None:
        now = [p.detach().clone() for p in self.params]
        if self.method == "oewc":
            fish = fisher(self.net, x, y, math.ceil(len(y) / BATCH_SIZE) * BATCH_SIZE)
            self.weights = (
                fish
                if self.weights is None
                else [self.hp["gamma"] * f + g for f, g in zip(self.weights, fish)]
            )
        elif self.method == "si":
            old = self.weights or [torch.zeros_like(p) for p in now]
            self.weights = [
                o + w / ((p - c) ** 2 + self.hp["xi"])
                for o, w, p, c in zip(old, self.small_omega, now, self.checkpoint)
            ]
            self.small_omega = [torch.zeros_like(p) for p in now]
        else:
            return
        self.checkpoint = now


def as_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [n, 28, 28, 1] -> float [n, 784] in [0, 1] (ToTensor), int64 labels."""
    x = torch.from_numpy(np.ascontiguousarray(images.reshape(len(images), -1))).float() / 255.0
    return x, torch.from_numpy(np.asarray(labels, np.int64))


@torch.no_grad()
def evaluate(
    net: nn.Module, tests: list, task_classes: np.ndarray | None = None
) -> tuple[list, list]:
    """training.py `evaluate`: accuracy in % on each stored task's test set; with `task_classes`,
    task-IL too: other tasks' logits at -inf (`mask_classes`' [k·cpt, (k+1)·cpt) =
    task_classes[k])."""
    accs, masked = [], []
    for k, (images, labels) in enumerate(tests):
        correct = correct_masked = 0
        for s in range(0, len(labels), 10_000):
            x, y = as_tensors(images[s : s + 10_000], labels[s : s + 10_000])
            outputs = net(x)
            correct += int((outputs.argmax(1) == y).sum())
            if task_classes is not None:
                outputs[:, ~torch.tensor(task_classes[k])] = -math.inf
                correct_masked += int((outputs.argmax(1) == y).sum())
        accs.append(100.0 * correct / len(labels))
        masked.append(100.0 * correct_masked / len(labels))
    return accs, masked


def run(
    method: str,
    scenario,
    seed: int,
    hp: dict,
    batch_size: int = BATCH_SIZE,
    begin_task: bool = True,
) -> dict:
    """training.py `train` over all tasks: begin_task, 1 epoch of shuffled batches, end_task,
    evaluate (task-IL too on class-IL scenarios)."""
    torch.manual_seed(seed)
    learner = Learner(method, mnist_mlp(), hp, seed)
    class_il = scenario.setting == "class"
    tests, matrix, matrix_task_il = [], [], []
    for t in range(scenario.num_tasks):
        x, y = as_tensors(*scenario.train(t))
        tests.append(scenario.test(t))
        if begin_task and method == "lwf":  # the only one of these models with a begin_task
            learner.begin_task(x, y, batch_size)
        order = torch.randperm(len(y))  # DataLoader(shuffle=True), last batch partial
        for index in order.split(batch_size):
            learner.observe(x[index], y[index], index)
        learner.end_task(x, y)
        accs, masked = evaluate(learner.net, tests, scenario.task_classes if class_il else None)
        matrix.append(accs)
        matrix_task_il.append(masked)
    result = dict(final=float(np.mean(matrix[-1])), matrix=matrix)
    if class_il:
        result.update(
            final_task_il=float(np.mean(matrix_task_il[-1])), matrix_task_il=matrix_task_il
        )
    return result


def cell_scenarios(benchmark: str, seeds: list[int], config=None):
    """The scenario our run with each seed sees (the data config is the same for every method);
    `config`: another table's cell config (default: this table's `benchmark`/sgd)."""
    config = config or table.config(benchmark, "sgd")
    scenario = build_scenario(config.data)
    if not config.data.draws_per_run:  # Seq-MNIST: the same tasks for every seed
        assert (
            scenario.setting == "class"
            and (scenario.task_classes.argmax(1) == np.arange(0, 10, 2)).all()
        )
        return [scenario] * len(seeds)
    return run_scenarios(config.data, scenario, seeds)


_CELLS = flags.DEFINE_list(
    "cells", ["rmnist/sgd"], "Cells: {p,r}mnist/{sgd,oewc,si,er-200,...}, smnist/lwf."
)
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Run seeds (same draws as our runs' seeds).")
_OUT = flags.DEFINE_string(
    "out_dir", "runs/torch_check", "Writes OUT_DIR/<benchmark>/<method>[-<buffer>].json."
)
_BEGIN_TASK = flags.DEFINE_bool(
    "begin_task",
    True,
    "False: 7ab9db97's train(), which never calls "
    "begin_task (LwF: no warm-up, no distillation); writes <method>-no_begin_task.json.",
)


def main(argv):
    del argv
    torch.set_num_threads(1)
    seeds = [int(s) for s in _SEEDS.value]
    for cell in _CELLS.value:
        benchmark, name = cell.split("/")
        method, _, buffer = name.partition("-")  # "er-200" -> er, buffer_size 200
        hp = dict(
            BEST_ARGS[(benchmark, method)], **(dict(buffer_size=int(buffer)) if buffer else {})
        )
        batch_size = hp.get("batch_size", BATCH_SIZE)
        runs = []
        for seed, scenario in zip(seeds, cell_scenarios(benchmark, seeds)):
            start = time.perf_counter()
            result = run(method, scenario, seed, hp, batch_size, _BEGIN_TASK.value)
            result.update(seed=seed, wall_s=time.perf_counter() - start)
            runs.append(result)
            task_il = (
                f" / task-IL {result['final_task_il']:.2f}" if "final_task_il" in result else ""
            )
            print(
                f"{cell} seed {seed}: {result['final']:.2f}{task_il}  ({result['wall_s']:.0f} s)",
                flush=True,
            )
        summary = {}
        for key in ("final", "final_task_il")[: 1 + ("final_task_il" in runs[0])]:
            values, stat = [r[key] for r in runs], key.replace("final", "")
            summary[f"mean{stat}"] = float(np.mean(values))
            summary[f"std{stat}_ddof1"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        print(f"{cell}: " + ", ".join(f"{k} {v:.2f}" for k, v in summary.items()), flush=True)
        suffix = "" if _BEGIN_TASK.value else "-no_begin_task"
        path = Path(_OUT.value) / benchmark / f"{name}{suffix}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                dict(
                    cell=cell,
                    hyper=hp,
                    batch_size=batch_size,
                    begin_task=_BEGIN_TASK.value,
                    **summary,
                    runs=runs,
                )
            )
        )


if __name__ == "__main__":
    app.run(main)
