"""The online suite: an online Split MNIST stream, sequax's ER, MIR and GSS against a plain
PyTorch loop doing the same work, in the same run (issue 18; the "online" section of
docs/benchmarks.md).

    python -m benchmarks.online                                  # from the repository root
    python -m benchmarks.online --methods=er --train_per_task=1000 --output=   # quick, prints
    python -m benchmarks.online --update_docs                    # + docs/benchmarks.md

The stream: real MNIST, 5 tasks of 2 classes, the whole training set (60,000 images, about
12,000 per task) seen once in batches of 10, boundaries hidden (`config.training.task_free`:
the engine calls no `start_task`/`end_task`, every example's task is -1); MLP 784-100-100-10
(mammoth's MNISTMLP, Xavier-uniform, zero biases), plain SGD lr 0.1; the model is evaluated
on every task's test set (class-IL) after each of the 5 segments, and once untrained.
Methods: ER (reservoir of 500, replay batch 10), MIR (500, replay 10, `subsample` 50 scored
candidates, virtual step at lr 0.1) and GSS-greedy (500, replay 10, `gss_minibatch_size` 10).

Each cell runs in its own process (`--single=METHOD,FRAMEWORK --json_out=FILE`), so its peak
RSS and time to result are that run's. sequax runs each method twice on a fresh compilation
cache of its own (`SEQUAX_COMPILATION_CACHE`): cold (every program compiled) and warm (loaded,
as a rerun is); the data cache is the user's, for both frameworks. Its figures are the run's
summary.json `timings` (`engine.clock`, `engine.compilation`): `train_samples_per_s`,
`time_to_result` (process start to summary), and the compilations per program: the stream
trains in one compiled program, `run_steps`, compiled once per run whatever the segment;
the suite checks it (exit status 1 otherwise).

The PyTorch side (`run_torch`) is an eager loop on one thread (`torch.set_num_threads(1)`, as
`sequax.launch.bench`: at batch 10 more threads only cost synchronisation), the same task
stream (`launch.torch_loop.task_stream`: classes, order of the tasks, examples), init and
hyper-parameters, one `randperm` per segment, and the references' own loops: ER as
mammoth's `er.py` with its example-by-example `reservoir()` insertion (as bench's loop);
MIR as optimass/Maximally_Interfered_Retrieval `mir.py` `retrieve_replay_update`
(`mir_replay`) with `utils.get_future_step_parameters` (a `deepcopy` stepped by -lr * g) and
`buffer.py`'s `add_reservoir` and `sample`, transcribed as tests/algorithms/test_mir.py; GSS
as mammoth's `models/gss.py` (`observe`, `get_grads`) and `utils/gss_buffer.py` (`add_data`,
`functional_reservoir`, `get_grad_score`, `get_data`), transcribed as
tests/algorithms/test_gss.py, with the references' own numpy/torch randomness. Boundaries
hidden on this side too: nothing is excluded from MIR's candidates (`exclude_task=None`) and
it rehearses whenever its buffer holds examples (the reference's `rehearse=task > 0` needs a
task). samples/s is training examples (the incoming batches, not the replayed ones) per
second of time inside the training loop, evaluation excluded on both sides.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from absl import app, flags, logging

from sequax.configs import common
from sequax.launch import bench  # its flags: --methods, --tasks, --train_per_task, --output, ...
from sequax.launch.common import define_update_docs, machine
from sequax.launch.torch_loop import reservoir, task_stream, timed_row, torch_accuracy_row

FLAGS = flags.FLAGS
define_update_docs()  # bench's flag, listed in this program's --help too
REPO_ROOT = Path(__file__).resolve().parents[1]  # where `python -m benchmarks.online` resolves
METHODS = ("er", "mir", "gss")
RUNS = ("cold", "warm", "torch")  # sequax on a fresh cache, sequax again on it, the torch loop
LR, BATCH, CAPACITY, REPLAY, SUBSAMPLE, GSS_MINIBATCH, SEED = 0.1, 10, 500, 10, 50, 10, 0


def make_config(method: str, tasks: int = 0, train_per_task: int = 0):
    """The sequax config of one cell (the torch loop reads the same one)."""
    hyper = {
        "er": dict(capacity=CAPACITY, replay_batch=REPLAY),
        "mir": dict(capacity=CAPACITY, replay_batch=REPLAY, subsample=SUBSAMPLE),
        "gss": dict(capacity=CAPACITY, replay_batch=REPLAY, gss_minibatch_size=GSS_MINIBATCH),
    }[method]
    config = common.der_config("split", method, LR, **hyper)
    if method == "mir":  # the virtual step's rate (der_config's own `lr` is the optimiser's)
        config.algorithm.lr = LR
    config.seed = SEED
    config.data.source = "mnist"  # real MNIST under data.root (../shared/data by default)
    config.data.num_tasks = tasks or 5
    config.data.train_per_task = train_per_task
    config.model.widths = (100, 100)
    config.optimizer.lr = LR
    config.training.batch_size = BATCH
    config.training.epochs = 1
    config.training.task_free = True  # boundaries hidden: no start_task / end_task
    config.checkpoint.enabled = False  # like the PyTorch loop: throughput, not resumability
    return config


# ---------------- sequax ---------------------------------------------------------------------
def run_sequax(config) -> dict:
    """One `loop.run`; its figures read back from the run's summary.json."""
    from sequax.engine import loop

    with tempfile.TemporaryDirectory() as workdir:
        loop.run(config, workdir, verbose=False)
        summary = json.loads((Path(workdir) / "summary.json").read_text())
        matrix = json.loads((Path(workdir) / "accuracy_matrix.json").read_text())
    t = summary["timings"]
    programs = t["compilations"]
    return dict(
        samples_per_s=t["train_samples_per_s"],
        train_samples=int(t["train_samples"]),
        train_steps=int(t["train_steps"]),
        time_to_result=t["time_to_result"],
        **{key: t[key] for key in ("startup", "data", "compile", "train", "eval", "wall")},
        compile_count=t["compile_count"],
        cache_hits=t["cache_hits"],
        run_steps=programs.get("run_steps", {}).get("count", 0),
        compilations={name: p["count"] for name, p in programs.items()},
        matrix=class_il(matrix),
    )


def class_il(matrix) -> list:
    """The class-IL matrix [T, T] of accuracy_matrix.json (one run)."""
    m = np.asarray(matrix["class_il"] if isinstance(matrix, dict) else matrix, np.float64)
    return (m if m.ndim == 2 else m[0]).tolist()


# ---------------- The plain PyTorch loop -----------------------------------------------------
class ER:
    """mammoth `models/er.py` `observe` with `utils/buffer.py` (reservoir, `get_data`)."""

    def __init__(self, torch, model, opt, algo, dim):
        self.torch, self.net, self.opt = torch, model, opt
        self.capacity, self.replay = int(algo.capacity), int(algo.replay_batch)
        self.examples = torch.zeros(self.capacity, dim)
        self.labels = torch.zeros(self.capacity, dtype=torch.long)
        self.num_seen_examples = 0

    def observe(self, inputs, labels) -> float:
        torch, F = self.torch, self.torch.nn.functional
        self.opt.zero_grad()
        if self.num_seen_examples > 0:  # get_data(minibatch_size): without replacement
            filled = min(self.num_seen_examples, self.capacity)
            choice = np.random.choice(filled, size=min(self.replay, filled), replace=False)
            choice = torch.from_numpy(choice)
            tinputs = torch.cat((inputs, self.examples[choice]))
            tlabels = torch.cat((labels, self.labels[choice]))
        else:
            tinputs, tlabels = inputs, labels
        loss = F.cross_entropy(self.net(tinputs), tlabels)
        loss.backward()
        self.opt.step()
        for i in range(inputs.shape[0]):  # Buffer.add_data: example by example
            index = reservoir(self.num_seen_examples, self.capacity)
            self.num_seen_examples += 1
            if index >= 0:
                self.examples[index] = inputs[i]
                self.labels[index] = labels[i]
        return loss.item()


class MIR:
    """optimass/Maximally_Interfered_Retrieval: er_main.py's step (`retrieve_replay_update`,
    then `buffer.add_reservoir`), buffer.py's `Buffer` (no logits, no task exclusion)."""

    def __init__(self, torch, model, opt, algo, dim):
        self.torch, self.model, self.opt = torch, model, opt
        self.lr, self.subsample = float(algo.lr), int(algo.subsample)
        self.buffer_batch_size = int(algo.replay_batch)
        self.bx = torch.zeros(int(algo.capacity), dim)
        self.by = torch.zeros(int(algo.capacity), dtype=torch.long)
        self.current_index = self.n_seen_so_far = 0

    def add_reservoir(self, x, y):
        n_elem = x.size(0)
        place_left = max(0, self.bx.size(0) - self.current_index)
        if place_left:  # add whatever still fits in the buffer
            offset = min(place_left, n_elem)
            self.bx[self.current_index : self.current_index + offset].data.copy_(x[:offset])
            self.by[self.current_index : self.current_index + offset].data.copy_(y[:offset])
            self.current_index += offset
            self.n_seen_so_far += offset
            if offset == x.size(0):
                return
        x, y = x[place_left:], y[place_left:]
        indices = self.torch.empty(x.size(0)).uniform_(0, self.n_seen_so_far).long()
        valid_indices = (indices < self.bx.size(0)).long()
        idx_new_data = valid_indices.nonzero().squeeze(-1)
        idx_buffer = indices[idx_new_data]
        self.n_seen_so_far += x.size(0)
        if idx_buffer.numel() == 0:
            return
        self.bx[idx_buffer] = x[idx_new_data]
        self.by[idx_buffer] = y[idx_new_data]

    def sample(self, amt):
        bx, by = self.bx[: self.current_index], self.by[: self.current_index]
        if bx.size(0) < amt:
            return bx, by
        indices = self.torch.from_numpy(np.random.choice(bx.size(0), amt, replace=False))
        return bx[indices], by[indices]

    def observe(self, input_x, input_y) -> float:
        torch, F, model = self.torch, self.torch.nn.functional, self.model
        loss_a = F.cross_entropy(model(input_x), input_y, reduction="none")
        loss = (loss_a).sum() / loss_a.size(0)
        self.opt.zero_grad()
        loss.backward()
        if self.current_index == 0:  # nothing to rehearse yet
            self.opt.step()
            self.add_reservoir(input_x, input_y)
            return loss.item()
        bx, by = self.sample(self.subsample)
        grad_dims = [param.data.numel() for param in model.parameters()]
        grad_vector = torch.cat([param.grad.data.view(-1) for param in model.parameters()])
        model_temp = copy.deepcopy(model)  # get_future_step_parameters
        with torch.no_grad():
            offset = 0
            for param, numel in zip(model_temp.parameters(), grad_dims, strict=True):
                param.data = param.data - self.lr * grad_vector[offset : offset + numel].view_as(
                    param
                )
                offset += numel
        with torch.no_grad():
            pre_loss = F.cross_entropy(model(bx), by, reduction="none")
            post_loss = F.cross_entropy(model_temp(bx), by, reduction="none")
            scores = post_loss - pre_loss
            big_ind = scores.sort(descending=True)[1][: self.buffer_batch_size]
        mem_x, mem_y = bx[big_ind], by[big_ind]
        replay_loss = F.cross_entropy(model(mem_x), mem_y)
        replay_loss.backward()
        self.opt.step()
        self.add_reservoir(input_x, input_y)
        return loss.item() + replay_loss.item()


class GSS:
    """mammoth `models/gss.py` (`observe`, `get_grads`, batch_num 1) with
    `utils/gss_buffer.py`'s `Buffer` (`add_data`, `functional_reservoir`, `get_grad_score`,
    `get_data`, its gradient cache)."""

    def __init__(self, torch, model, opt, algo, dim):
        self.torch, self.net, self.opt = torch, model, opt
        self.minibatch_size, self.buffer_size = int(algo.replay_batch), int(algo.capacity)
        self.gss_minibatch_size = int(algo.gss_minibatch_size)
        self.examples = torch.zeros(self.buffer_size, dim)
        self.labels = torch.zeros(self.buffer_size, dtype=torch.long)
        self.scores = torch.zeros(self.buffer_size)
        self.num_seen_examples, self.cache = 0, {}
        self.fathom, self.fathom_mask = 0, torch.arange(0)

    def get_grads(self, inputs, labels):
        self.net.eval()
        self.opt.zero_grad()
        loss = self.torch.nn.functional.cross_entropy(self.net(inputs), labels)
        loss.backward()
        grads = self.torch.cat([p.grad.view(-1) for p in self.net.parameters()]).clone().detach()
        self.opt.zero_grad()
        self.net.train()
        return grads.unsqueeze(0) if len(grads.shape) == 1 else grads

    def get_grad_score(self, x, y, X, Y, indices):
        g = self.get_grads(x, y)
        G = []
        for x_, y_, idx in zip(X, Y, indices, strict=True):
            idx = int(idx)
            if idx not in self.cache:
                self.cache[idx] = self.get_grads(x_.unsqueeze(0), y_.unsqueeze(0))
            G.append(self.cache[idx])
        G = self.torch.cat(G)
        c_score, grads_at_a_time = 0, 5
        for it in range(int(np.ceil(G.shape[0] / grads_at_a_time))):
            chunk = G[it * grads_at_a_time : (it + 1) * grads_at_a_time]
            tmp = self.torch.nn.functional.cosine_similarity(g, chunk, dim=1).max().item() + 1
            c_score = max(c_score, tmp)
        return c_score

    def functional_reservoir(self, x, y, batch_c, bigX, bigY, indices):
        if self.num_seen_examples < self.buffer_size:
            return self.num_seen_examples, batch_c
        if batch_c < 1:
            single_c = self.get_grad_score(x.unsqueeze(0), y.unsqueeze(0), bigX, bigY, indices)
            s = self.scores.numpy()
            i = np.random.choice(np.arange(0, self.buffer_size), size=1, p=s / s.sum())[0]
            rand = np.random.rand(1)[0]
            if rand < s[i] / (s[i] + single_c):
                return i, single_c
        return -1, 0

    def get_data(self, size, random=False):
        filled = min(self.num_seen_examples, self.examples.shape[0])
        size = min(size, self.examples.shape[0])
        if random:
            choice = np.random.choice(filled, size=min(size, self.num_seen_examples), replace=False)
        else:
            choice = np.arange(self.fathom, min(self.fathom + size, filled))
            choice = self.fathom_mask[choice]
            self.fathom += len(choice)
            if self.fathom >= self.examples.shape[0] or self.fathom >= self.num_seen_examples:
                self.fathom = 0
        return self.examples[choice], self.labels[choice], choice

    def add_data(self, examples, labels):
        if self.num_seen_examples > 0:
            n = min(self.gss_minibatch_size, self.num_seen_examples)
            bigX, bigY, indices = self.get_data(n, random=True)
            c = self.get_grad_score(examples, labels, bigX, bigY, indices)
        else:
            bigX, bigY, indices, c = None, None, None, 0.1
        for i in range(examples.shape[0]):
            index, score = self.functional_reservoir(examples[i], labels[i], c, bigX, bigY, indices)
            self.num_seen_examples += 1
            if index >= 0:
                self.examples[index] = examples[i]
                self.labels[index] = labels[i]
                self.scores[index] = score
                self.cache.pop(int(index), None)

    def observe(self, inputs, labels) -> float:
        self.cache = {}  # drop_cache
        self.fathom = 0  # reset_fathom
        self.fathom_mask = self.torch.randperm(min(self.num_seen_examples, self.buffer_size))
        self.opt.zero_grad()
        if self.num_seen_examples > 0:
            buf_inputs, buf_labels, _ = self.get_data(self.minibatch_size)
            tinputs = self.torch.cat((inputs, buf_inputs))
            tlabels = self.torch.cat((labels, buf_labels))
        else:
            tinputs, tlabels = inputs, labels
        loss = self.torch.nn.functional.cross_entropy(self.net(tinputs), tlabels)
        loss.backward()
        self.opt.step()
        self.add_data(inputs, labels)
        return loss.item()


LOOPS = {"er": ER, "mir": MIR, "gss": GSS}


def run_torch(config) -> dict:
    """The plain eager PyTorch loop on `config`'s stream (module docstring)."""
    import torch
    from torch import nn

    from sequax.engine.clock import process_start  # imports no JAX

    wall_start, wall_start_epoch = time.perf_counter(), time.time()
    torch.set_num_threads(1)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    scenario = task_stream(config)

    def tensors(x, y):
        x = torch.from_numpy(x.reshape(len(x), -1).astype(np.float32) / 255.0)
        return x, torch.from_numpy(y).long()

    widths = (784, *config.model.widths)
    layers = []
    for fan_in, fan_out in itertools.pairwise(widths):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(widths[-1], scenario.num_classes))
    for module in model:
        if isinstance(module, nn.Linear):  # mammoth's `xavier` init, as sequax's "xavier"
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    opt = torch.optim.SGD(model.parameters(), lr=float(config.optimizer.lr))  # one, never reset
    method = LOOPS[config.algorithm.name](torch, model, opt, config.algorithm, widths[0])
    tests = [tensors(*scenario.test(t)) for t in range(scenario.num_tasks)]
    task_classes = torch.tensor(scenario.task_classes)

    def evaluate(p: int) -> list[float]:
        return torch_accuracy_row(model, tests, task_classes, p, int(config.eval.batch_size))

    evaluate(0)  # the untrained model, as sequax's loop does
    timings, matrix, train_samples = {"train": 0.0, "eval": 0.0}, [], 0
    batch_size = int(config.training.batch_size)
    for task in range(scenario.num_tasks):  # segments of the stream; the method is not told
        x_task, y_task = tensors(*scenario.train(task))
        steps = len(y_task) // batch_size  # drop_last, as sequax
        t0 = time.perf_counter()
        order = torch.randperm(len(y_task), generator=generator)
        for i in range(steps):
            index = order[i * batch_size : (i + 1) * batch_size]
            method.observe(x_task[index], y_task[index])
        timings["train"] += time.perf_counter() - t0
        train_samples += steps * batch_size
        timed_row(matrix, evaluate, task, timings)
    return dict(
        samples_per_s=train_samples / max(timings["train"], 1e-9),
        train_samples=train_samples,
        time_to_result=time.time() - process_start(),  # sequax's clock: process start to here
        startup=wall_start_epoch - process_start(),
        wall=time.perf_counter() - wall_start,
        matrix=matrix,
        **timings,
    )


# ---------------- Cells, each in its own process ---------------------------------------------
def run_single(spec: str, json_out: str) -> None:
    """One cell, "METHOD,FRAMEWORK" (sequax or torch), written to `json_out`."""
    method, framework = spec.split(",")
    config = make_config(method, FLAGS.tasks, FLAGS.train_per_task)
    if framework == "sequax":
        if FLAGS.sequax_cores > 0:  # before JAX starts its thread pool (as bench)
            cores = sorted(os.sched_getaffinity(0))[: FLAGS.sequax_cores]
            os.sched_setaffinity(0, set(cores))
        result = run_sequax(config)
    else:
        result = run_torch(config)
    result["acc"] = 100.0 * float(np.mean(result["matrix"][-1]))
    result["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB
    result.update(method=method, framework=framework)
    Path(json_out).write_text(json.dumps(result))


def child(method: str, run: str, folder: str) -> dict | None:
    """Cell (`method`, `run`) in its own process; sequax's cold and warm runs of a method share
    a compilation cache of their own under `folder`."""
    framework = "torch" if run == "torch" else "sequax"
    out = os.path.join(folder, f"{method}_{run}.json")
    env = {**os.environ, "SEQUAX_COMPILATION_CACHE": os.path.join(folder, f"xla_{method}")}
    command = [sys.executable, "-m", "benchmarks.online", f"--single={method},{framework}",
               f"--json_out={out}", f"--tasks={FLAGS.tasks}",
               f"--train_per_task={FLAGS.train_per_task}",
               f"--sequax_cores={FLAGS.sequax_cores}"]  # fmt: skip
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=3600,
                          cwd=REPO_ROOT, env=env)  # fmt: skip
    if done.returncode != 0:
        print(f"  FAILED ({done.returncode}):\n{done.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(Path(out).read_text())


def suite(methods) -> tuple[dict, float]:
    """{(method, run): result} of every cell, and the suite's seconds."""
    start, cells = time.perf_counter(), {}
    with tempfile.TemporaryDirectory() as folder:
        for method in methods:
            for run in RUNS:
                t0 = time.perf_counter()
                print(f"online {method} {run} ...", end=" ", flush=True)
                cells[(method, run)] = c = child(method, run, folder)
                seconds, said = time.perf_counter() - t0, "failed"
                if c:
                    said = (
                        f"{c['samples_per_s']:,.0f} samples/s, time to result "
                        f"{c['time_to_result']:.1f}s, acc {c['acc']:.2f}% ({seconds:.0f}s)"
                    )
                print(said, flush=True)
    return cells, time.perf_counter() - start


def bad_compiles(cells: dict) -> list[str]:
    """The sequax cells whose `run_steps` was not compiled (or loaded) exactly once."""
    sequax = [(m, r, c) for (m, r), c in cells.items() if c and r != "torch"]
    return [f"{m} {r}: run_steps compiled {c['run_steps']} times"
            for m, r, c in sequax if c["run_steps"] != 1]  # fmt: skip


# ---------------- Report ---------------------------------------------------------------------
def table(cells: dict, methods) -> str:
    lines = [
        "| method | run | samples/s | × torch | train s | time to result s | torch ÷ this "
        "| compile s | run_steps compiles | programs (from cache) | acc % | peak RSS MiB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for method in methods:
        torch_cell = cells.get((method, "torch"))
        for run in RUNS:
            c = cells.get((method, run))
            if c is None:
                lines.append(f"| {method.upper()} | {run} | failed |" + " |" * 9)
                continue
            sequax = run != "torch"
            speed = ttr = "–"
            if sequax and torch_cell:
                speed = f"{c['samples_per_s'] / torch_cell['samples_per_s']:.2f}×"
                ttr = f"{torch_cell['time_to_result'] / c['time_to_result']:.2f}×"
            compiled = "– | – | –"
            if sequax:
                compiled = (f"{c['compile']:.1f} | {c['run_steps']} "
                            f"| {c['compile_count']} ({c['cache_hits']})")  # fmt: skip
            lines.append(
                f"| {method.upper()} | {'sequax ' + run if sequax else 'torch'} "
                f"| {c['samples_per_s']:,.0f} | {speed} | {c['train']:.1f} "
                f"| {c['time_to_result']:.1f} | {ttr} | {compiled} | {c['acc']:.2f} "
                f"| {c['rss_mib']:.0f} |"
            )
    return "\n".join(lines)


def summary(cells: dict, methods) -> str:
    lines = [
        "| method | samples/s: sequax ÷ torch (cold, warm) | time to result: torch ÷ sequax "
        "(cold, warm) | acc %: sequax cold, torch (Δ points) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for method in methods:
        cold, warm, torch_cell = (cells.get((method, r)) for r in RUNS)
        if not (cold and warm and torch_cell):
            continue
        speed = [c["samples_per_s"] / torch_cell["samples_per_s"] for c in (cold, warm)]
        ttr = [torch_cell["time_to_result"] / c["time_to_result"] for c in (cold, warm)]
        lines.append(
            f"| {method.upper()} | {speed[0]:.2f}×, {speed[1]:.2f}× | {ttr[0]:.2f}×, "
            f"{ttr[1]:.2f}× | {cold['acc']:.2f}, {torch_cell['acc']:.2f} "
            f"({cold['acc'] - torch_cell['acc']:+.2f}) |"
        )
    return "\n".join(lines)


HOW_TO_READ = """\
### How to read this

- **samples/s** counts the incoming training examples (not the replayed ones) per second of
  time inside the training loop: replay sampling, MIR's virtual step and scoring, GSS's
  gradient scores and buffer updates are included; compilation and evaluation are not.
  sequax's is summary.json's `train_samples_per_s` (time inside its compiled dispatches of
  250 steps, each blocking on its metrics). **× torch** divides by the torch row's.
- **time to result** is process start (from /proc) to the summary, on both sides: the
  interpreter, imports, reading MNIST, (sequax) compiling or loading its programs, training,
  and the 6 evaluations. **torch ÷ this**: how many times shorter than the torch loop's.
  **cold**: a fresh compilation cache (every program compiled); **warm**: the same command
  again on that cache (as a rerun: whole programs loaded, `engine.program_cache`).
- **run_steps compiles**: how many times the run compiled (or loaded) its training program,
  `run_steps`, from summary.json's `timings.compilations`: 1 is one program for the whole
  stream, all 5 segments; **programs (from cache)** counts every program of the run
  (training, init, epoch order, evaluation, placing the data) and how many were loaded.
- **acc %**: final class-IL accuracy, the mean of the last row of the accuracy matrix (every
  class a candidate). The two frameworks draw different random numbers (example order,
  replay and candidate samples, reservoir slots), so they agree in range, not digit for digit.
- **peak RSS**: `ru_maxrss` of the cell's own process (the torch child never imports JAX).
- The torch loops are the references' own (module docstring of `benchmarks/online.py`):
  ER inserts example by example (mammoth), MIR builds its virtual network by `deepcopy` each
  step (optimass's `get_future_step_parameters`), GSS computes each gradient it scores by its
  own backward pass (mammoth's `get_grads`, with its cache). sequax runs each step as one
  fused program: MIR's virtual step and candidate scoring, GSS's per-example gradients
  (`vmap`), cosine scores and its sequential replacement loop (`lax.scan`) all inside it.
"""


def section(cells: dict, methods, header_lines: list[str], info: dict, pinned: int = 0) -> str:
    """The markdown of the suite (between the `<!-- online -->` markers); `pinned`: the cores
    sequax was pinned to (`--sequax_cores`, 0: all)."""
    cores, load = info["cores"], info["load"][0]
    threads = f"on all {cores} cores, XLA's default threading"
    if pinned:
        threads = f"pinned to {pinned} core(s) with `sched_setaffinity`"
    lines = [
        "## Online Split MNIST: ER, MIR and GSS, one compiled program per run",
        "",
        "Each cell in its own process (`benchmarks/online.py`).",
        *header_lines,
        f"- Threads: torch `set_num_threads(1)`; sequax {threads} (XLA_FLAGS: "
        f"{info['xla_flags']}).",
        "- Stream: Split MNIST class-IL, real MNIST, 5 tasks × 2 classes, the whole training set "
        "(60,000 images) once, batch 10, boundaries hidden (`config.training.task_free`); MLP "
        f"784-100-100-10, SGD lr {LR}; evaluation after each task. ER: reservoir of 500, "
        "replay 10. MIR: 500, replay 10, subsample 50, virtual step lr 0.1. GSS: 500, "
        "replay 10, gss_minibatch_size 10.",
    ]
    if load > 0.5 * cores:
        lines.append(
            f"- **Taken under load** (load average {load:.2f} on {cores} cores at the start: "
            "other jobs were running): the numbers are indicative only."
        )
    lines += ["", "### Results", "", table(cells, methods), "", summary(cells, methods), ""]
    bad = bad_compiles(cells)
    lines += [f"**Not one program per run**: {'; '.join(bad)}.", ""] if bad else []
    lines += [HOW_TO_READ]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.single:  # one cell, in this process
        run_single(FLAGS.single, FLAGS.json_out)
        return
    methods = [m for m in FLAGS.methods.split(",") if m]
    if set(methods) - set(METHODS):
        raise app.UsageError(f"--methods={FLAGS.methods}: use {', '.join(METHODS)}")
    paths = bench.documents(FLAGS.output, FLAGS.update_docs, REPO_ROOT)  # before any cell
    info = machine()
    cells, seconds = suite(methods)
    header = bench.header(info, seconds, "online", program="benchmarks.online")
    text = section(cells, methods, header, info, FLAGS.sequax_cores)
    print("\n" + text.split("### How to read this")[0].rstrip())
    bench.publish("online", text, paths)
    bad = bad_compiles(cells)
    if bad or not all(cells.values()):
        sys.exit(f"online: {'; '.join(bad) or 'a cell failed'}")


if __name__ == "__main__":
    FLAGS.set_default("methods", ",".join(METHODS))  # bench's flag; its default is bench's
    app.run(main)
