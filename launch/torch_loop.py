"""The plain PyTorch loop `bench` compares sequax against (PROTOCOLS §E): the same data,
model, method and evaluation written as an eager torch training loop, with mammoth's reservoir
buffer for ER and an online EWC whose empirical Fisher is taken per example with `torch.func`.
"""

from __future__ import annotations

import itertools
import time

import numpy as np

from sequax.engine.clock import process_start


def reservoir(num_seen: int, buffer_size: int) -> int:
    """mammoth's `reservoir()`: the slot of the next example, or -1 to drop it."""
    if num_seen < buffer_size:
        return num_seen
    rand = np.random.randint(0, num_seen + 1)
    return rand if rand < buffer_size else -1


def torch_accuracy_row(
    model, tests, task_classes, phase: int, batch_size: int, prepare=None
) -> list[float]:
    """Row `phase` of a torch model's class-IL accuracy matrix: every task's test accuracy,
    logits masked to the classes seen so far (`task_classes[: phase + 1]`). `prepare` maps a
    test batch to the model's input (e.g. normalisation); the model is left in train mode."""
    import torch

    seen = task_classes[: phase + 1].any(0)
    model.eval()
    row = []
    with torch.no_grad():
        for x, y in tests:
            hits = 0
            for s in range(0, len(y), batch_size):
                inputs = x[s : s + batch_size]
                logits = model(prepare(inputs) if prepare else inputs)
                logits = logits.masked_fill(~seen, torch.finfo(logits.dtype).min)
                hits += int((logits.argmax(-1) == y[s : s + batch_size]).sum())
            row.append(hits / len(y))
    model.train()
    return row


def run_torch(config, device: str = "cpu") -> dict:
    """The plain PyTorch loop doing the same work as sequax on `config` (module docstring)."""
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.func import functional_call, grad, vmap

    wall_start, wall_start_epoch = time.perf_counter(), time.time()
    torch.set_num_threads(1)
    device = torch.device(device)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)

    scenario = task_stream(config)

    def tensors(x, y):
        x = torch.from_numpy(x.reshape(len(x), -1).astype(np.float32) / 255.0)
        return x.to(device), torch.from_numpy(y).long().to(device)

    widths = (784, *config.model.widths)
    layers = []
    for fan_in, fan_out in itertools.pairwise(widths):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(widths[-1], scenario.num_classes)).to(device)
    for module in model:
        if isinstance(module, nn.Linear):  # the DER MLP's init, as sequax's "xavier"
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    params = dict(model.named_parameters())

    algo = config.algorithm
    capacity = algo.get("capacity", 0)  # ER's reservoir size
    batch_size, lr = int(config.training.batch_size), float(config.optimizer.lr)
    tests = [tensors(*scenario.test(t)) for t in range(scenario.num_tasks)]
    task_classes = torch.tensor(scenario.task_classes, device=device)

    def evaluate(p: int) -> list[float]:
        return torch_accuracy_row(model, tests, task_classes, p, int(config.eval.batch_size))

    # Online EWC: per-example gradients of log p(y|x) by vmap(grad), in chunks of 128.
    def log_likelihood(p, x, label):
        return -F.cross_entropy(functional_call(model, p, (x[None],)), label[None])

    per_example_grads = vmap(grad(log_likelihood), in_dims=(None, 0, 0))

    def fisher(x, y) -> dict:
        detached = {k: v.detach() for k, v in params.items()}
        total = {k: torch.zeros_like(v) for k, v in detached.items()}
        for s in range(0, len(y), 128):
            grads = per_example_grads(detached, x[s : s + 128], y[s : s + 128])
            for k in total:
                total[k] += (grads[k] ** 2).sum(0)
        return {k: v / len(y) for k, v in total.items()}

    importance = anchor = None  # mammoth's checkpoint: no penalty before the first task ends
    buffer_x = torch.zeros(capacity, widths[0], device=device)
    buffer_y = torch.zeros(capacity, dtype=torch.long, device=device)
    num_seen = 0

    evaluate(0)  # the untrained model, as sequax's loop does (for forward transfer)
    timings = {"train": 0.0, "end_task": 0.0, "eval": 0.0}
    matrix, train_samples = [], 0
    for task in range(scenario.num_tasks):
        x_task, y_task = tensors(*scenario.train(task))
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)  # re-created per task, as mammoth
        steps = len(y_task) // batch_size  # drop_last, as sequax
        t0 = time.perf_counter()
        for _ in range(int(config.training.epochs)):
            order = torch.randperm(len(y_task), generator=generator).to(device)
            for i in range(steps):
                index = order[i * batch_size : (i + 1) * batch_size]
                x, y = x_task[index], y_task[index]
                inputs, labels = x, y
                if algo.name == "er" and num_seen > 0:  # mammoth er.py: replay, then one forward
                    filled = min(num_seen, capacity)
                    choice = np.random.choice(
                        filled, size=min(algo.replay_batch, filled), replace=False
                    )
                    choice = torch.from_numpy(choice).to(device)
                    inputs, labels = (
                        torch.cat([x, buffer_x[choice]]),
                        torch.cat([y, buffer_y[choice]]),
                    )
                optimizer.zero_grad()
                loss = F.cross_entropy(model(inputs), labels)
                if algo.name == "ewc" and importance is not None:
                    penalty = sum(
                        (importance[k] * (p - anchor[k]) ** 2).sum() for k, p in params.items()
                    )
                    loss = loss + 0.5 * float(algo.lam) * penalty
                loss.backward()
                optimizer.step()
                loss.item()  # mammoth's observe returns loss.item() every step
                if algo.name == "er":  # mammoth Buffer.add_data: example by example
                    for j in range(len(y)):
                        slot = reservoir(num_seen, capacity)
                        num_seen += 1
                        if slot >= 0:
                            buffer_x[slot] = x[j]
                            buffer_y[slot] = y[j]
            train_samples += steps * batch_size
        timings["train"] += time.perf_counter() - t0

        t0 = time.perf_counter()
        if algo.name == "ewc":
            new = fisher(x_task, y_task)
            gamma = float(algo.gamma)
            importance = (
                new if importance is None else {k: gamma * importance[k] + new[k] for k in new}
            )
            anchor = {k: v.detach().clone() for k, v in params.items()}
            if device.type == "cuda":  # kernels run asynchronously: time them done
                torch.cuda.synchronize()
        timings["end_task"] += time.perf_counter() - t0

        timed_row(matrix, evaluate, task, timings)
    return loop_result(timings, wall_start, train_samples, matrix,
                       time_to_result=time.time() - process_start(),  # sequax's clock
                       startup=wall_start_epoch - process_start())  # fmt: skip


def task_stream(config):
    """The same task stream as sequax's `build_scenario`: source, scenario seed and subsets."""
    from sequax.data import load_source, make_scenario, subsample

    d = config.data
    scenario = make_scenario(d.scenario, load_source(d.source, d.root), num_tasks=d.num_tasks,
                             seed=d.seed, **d.options.to_dict())  # fmt: skip
    if d.train_per_task or d.test_per_task:
        scenario = subsample(
            scenario, d.train_per_task or None, d.test_per_task or None, seed=d.seed
        )
    return scenario


def timed_row(matrix: list, evaluate, task: int, timings: dict) -> None:
    """Appends the accuracy row after `task`, its seconds added to `timings["eval"]`."""
    t0 = time.perf_counter()
    matrix.append(evaluate(task))
    timings["eval"] += time.perf_counter() - t0


def loop_result(timings: dict, wall_start: float, train_samples: int, matrix, **extra) -> dict:
    """A torch loop's result as `bench` reports it: samples/s, its timings and matrix."""
    timings["wall"] = time.perf_counter() - wall_start
    return dict(samples_per_s=train_samples / max(timings["train"], 1e-9),
                compile=extra.pop("compile", 0.0), train_samples=train_samples, matrix=matrix,
                **extra, **timings)  # fmt: skip
