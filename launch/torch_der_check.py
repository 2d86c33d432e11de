"""A plain-PyTorch transcription of mammoth's 2020 training loop for the DER P-/R-MNIST cells.

Independent evidence for Table 2 of the DER paper (Buzzega et al., NeurIPS 2020): it runs the
loop of aimagelab/mammoth @ 7ab9db97 for sgd, oEWC (`ewc_on`) and SI on *our* data. Where our
JAX number differs from the published one, agreement of this with the published value points
at our implementation; agreement with ours points at the published number (or its data draws).

    python -m sequax.launch.torch_der_check --cells=rmnist/sgd,pmnist/oewc --seeds=0,1,2

Seed s trains on the scenario our run with seed s sees: `run_scenarios` on the cell's config
(`configs/reproduce/der/table.py`, `data.draws_per_run=True`), so the permutations / angles come
from `draw_seed(data.seed, s)`; inputs are uint8/255, flattened. Seed s also seeds torch (init,
batch order), which cannot match our JAX run, only be distributed alike. Writes
OUT/<benchmark>/<method>.json: per seed the final average accuracy, accuracy matrix, wall time.

Mapping (mammoth file @ 7ab9db97 -> here): backbone/MNISTMLP.py and backbone/__init__.py
`xavier` -> `mnist_mlp`; models/utils/continual_model.py `SGD(params, lr)` -> `Learner.opt`;
models/{sgd,ewc_on,si}.py `observe` / `end_task` -> `Learner.observe` / `Learner.end_task`;
datasets/perm_mnist.py `DataLoader(batch 128, shuffle=True)` -> the `randperm` batches of `run`;
utils/training.py `train` / `evaluate` -> `run` / `evaluate`; utils/best_args.py -> `BEST_ARGS`.
Differences, none changing what is computed: the Fisher's per-example gradients come from
`torch.func.vmap(grad)` over chunks, not a loop over single examples (equal up to float
summation order); batches are slices of one `randperm` (what `RandomSampler` draws), not
item-by-item collation; evaluation runs in chunks of 10,000. The data differ from mammoth's
only as our scenarios do (R-MNIST: scipy nearest rotation of the uint8 image, not
torchvision's PIL rotate; the draws are numpy-seeded).
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

# mammoth utils/best_args.py @ 7ab9db97: 'perm-mnist' / 'rot-mnist', batch_size 128, n_epochs 1.
BEST_ARGS = {("pmnist", "sgd"): dict(lr=0.2), ("rmnist", "sgd"): dict(lr=0.2),
             ("pmnist", "oewc"): dict(lr=0.1, e_lambda=0.7, gamma=1.0),
             ("rmnist", "oewc"): dict(lr=0.1, e_lambda=0.7, gamma=1.0),
             ("pmnist", "si"): dict(lr=0.1, c=0.5, xi=1.0), ("rmnist", "si"): dict(lr=0.1, c=1.0, xi=1.0)}
BATCH_SIZE = 128


def mnist_mlp() -> nn.Module:
    """MNISTMLP(784, 10): fc1, ReLU, fc2, ReLU, classifier; mammoth's `xavier`: weights
    U(-a, a), a = sqrt(3) * sqrt(2 / (fan_in + fan_out)), biases 0."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(),
                        nn.Linear(100, 10))
    for m in (m for m in net if isinstance(m, nn.Linear)):
        m.weight.data.uniform_(-(a := math.sqrt(3.0) * math.sqrt(2.0 / sum(m.weight.shape))), a)
        m.bias.data.fill_(0.0)
    return net


def fisher(net: nn.Module, x: torch.Tensor, y: torch.Tensor, denominator: int, chunk: int = 256) -> list:
    """ewc_on.py `end_task`: sum over examples of p(y|x) * (d log p(y|x) / dθ)², / `denominator`
    (mammoth: len(train_loader) * batch_size). Per-example gradients by vmap(grad)."""
    params = {k: v.detach() for k, v in net.named_parameters()}

    def log_likelihood(p, xi, yi):
        return -F.nll_loss(F.log_softmax(functional_call(net, p, (xi[None],)), dim=1), yi[None])

    per_example = vmap(grad_and_value(log_likelihood), in_dims=(None, 0, 0))
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    for s in range(0, len(y), chunk):
        grads, log_p = per_example(params, x[s:s + chunk], y[s:s + chunk])
        weight = log_p.exp()  # exp_cond_prob, a constant weight
        for k in total:
            total[k] += torch.einsum("b,b...->...", weight, grads[k] ** 2)
    return [total[k] / denominator for k, _ in net.named_parameters()]


class Learner:
    """mammoth's ContinualModel subclasses sgd / ewc_on / si, on flat parameter lists."""

    def __init__(self, method: str, net: nn.Module, hp: dict):
        self.method, self.net, self.hp = method, net, hp
        self.params = list(net.parameters())
        self.opt = torch.optim.SGD(self.params, lr=hp["lr"])  # continual_model.py: no momentum
        self.weights = None  # oEWC's fish / SI's big_omega (None until the first end_task)
        # ewc_on: checkpoint None until end_task; si: checkpoint = the initial parameters.
        self.checkpoint = [p.detach().clone() for p in self.params] if method == "si" else None
        self.small_omega = [torch.zeros_like(p) for p in self.params]

    def penalty(self) -> torch.Tensor:
        if self.weights is None:
            return torch.tensor(0.0)
        return sum((w * (p - c) ** 2).sum() for w, p, c in zip(self.weights, self.params, self.checkpoint))

    def observe(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.opt.zero_grad()
        loss = F.cross_entropy(self.net(x), y)
        if self.method != "sgd":  # ewc_on: + e_lambda * penalty; si: + c * penalty
            loss = loss + self.hp["e_lambda" if self.method == "oewc" else "c"] * self.penalty()
        loss.backward()
        if self.method == "si":
            nn.utils.clip_grad_value_(self.params, 1)
        self.opt.step()
        for w, p in zip(self.small_omega if self.method == "si" else (), self.params):
            w += self.hp["lr"] * p.grad.detach() ** 2  # si: small_omega += lr * (clipped grad)²
        return loss.item()

    def end_task(self, x: torch.Tensor, y: torch.Tensor) -> None:
        now = [p.detach().clone() for p in self.params]
        if self.method == "oewc":
            fish = fisher(self.net, x, y, math.ceil(len(y) / BATCH_SIZE) * BATCH_SIZE)
            self.weights = fish if self.weights is None else [
                self.hp["gamma"] * f + g for f, g in zip(self.weights, fish)]
        elif self.method == "si":
            old = self.weights or [torch.zeros_like(p) for p in now]
            self.weights = [o + w / ((p - c) ** 2 + self.hp["xi"])
                            for o, w, p, c in zip(old, self.small_omega, now, self.checkpoint)]
            self.small_omega = [torch.zeros_like(p) for p in now]
        else:
            return
        self.checkpoint = now


def as_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [n, 28, 28, 1] -> float [n, 784] in [0, 1] (ToTensor), int64 labels."""
    x = torch.from_numpy(np.ascontiguousarray(images.reshape(len(images), -1))).float() / 255.0
    return x, torch.from_numpy(np.asarray(labels, np.int64))


@torch.no_grad()
def evaluate(net: nn.Module, tests: list) -> list[float]:
    """training.py `evaluate` (domain-IL): accuracy in % on each stored task's test set."""
    accs = []
    for images, labels in tests:
        correct = 0
        for s in range(0, len(labels), 10_000):
            x, y = as_tensors(images[s:s + 10_000], labels[s:s + 10_000])
            correct += int((net(x).argmax(1) == y).sum())
        accs.append(100.0 * correct / len(labels))
    return accs


def run(method: str, scenario, seed: int, hp: dict, batch_size: int = BATCH_SIZE) -> dict:
    """training.py `train` over all tasks: 1 epoch of shuffled batches, end_task, evaluate."""
    torch.manual_seed(seed)
    learner = Learner(method, mnist_mlp(), hp)
    tests, matrix = [], []
    for t in range(scenario.num_tasks):
        x, y = as_tensors(*scenario.train(t))
        tests.append(scenario.test(t))
        order = torch.randperm(len(y))  # DataLoader(shuffle=True), last batch partial
        for index in order.split(batch_size):
            learner.observe(x[index], y[index])
        learner.end_task(x, y)
        matrix.append(evaluate(learner.net, tests))
    return dict(final=float(np.mean(matrix[-1])), matrix=matrix)


def cell_scenarios(benchmark: str, seeds: list[int]):
    """The scenario our run with each seed sees (the data config is the same for every method)."""
    config = table.config(benchmark, "sgd")
    assert config.data.draws_per_run
    return run_scenarios(config.data, build_scenario(config.data), seeds)


_CELLS = flags.DEFINE_list("cells", ["rmnist/sgd"], "benchmark/method cells: {p,r}mnist/{sgd,oewc,si}.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Run seeds (same draws as our runs' seeds).")
_OUT = flags.DEFINE_string("out", "runs/torch_check", "Writes OUT/<benchmark>/<method>.json.")


def main(argv):
    del argv
    torch.set_num_threads(1)
    seeds = [int(s) for s in _SEEDS.value]
    for cell in _CELLS.value:
        benchmark, method = cell.split("/")
        hp = BEST_ARGS[(benchmark, method)]
        runs = []
        for seed, scenario in zip(seeds, cell_scenarios(benchmark, seeds)):
            start = time.perf_counter()
            result = run(method, scenario, seed, hp)
            result.update(seed=seed, wall_s=time.perf_counter() - start)
            runs.append(result)
            print(f"{cell} seed {seed}: {result['final']:.2f}  ({result['wall_s']:.0f} s)", flush=True)
        finals = np.array([r["final"] for r in runs])
        std = float(finals.std(ddof=1)) if len(finals) > 1 else 0.0
        print(f"{cell}: {finals.mean():.2f} ± {std:.2f} (ddof=1, {len(finals)} seeds)", flush=True)
        path = Path(_OUT.value) / benchmark / f"{method}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dict(cell=cell, hyper=hp, batch_size=BATCH_SIZE, mean=float(finals.mean()),
                                        std_ddof1=std, runs=runs)))


if __name__ == "__main__":
    app.run(main)
