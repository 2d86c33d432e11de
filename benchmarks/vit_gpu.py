"""ViT-B/16 at 224 px on one GPU: sequax's L2P and SLCA against plain PyTorch loops on the
same GPU, L2P's frozen-feature (query cache) speed-up, and the peak device memory (issue 19,
item 6; the `<!-- vit_gpu -->` section of docs/benchmarks.md).

    python -m benchmarks.vit_gpu --results=/tmp/vit_gpu.json   # GPU machine, repository root
    python -m benchmarks.vit_gpu --report=/tmp/vit_gpu.json --update_docs   # anywhere
    python -m benchmarks.vit_gpu --tiny --results=/tmp/x.json  # the whole path, tiny, on a CPU

Data: `synthetic_cifar100`, a user's `ImageSource` (`config.data.source=
"benchmarks.vit_gpu:synthetic_cifar100"`) of CIFAR-100's size and format: uint8 [N, 32, 32, 3],
100 classes, 500 training and 100 test images per class, class-tinted uniform noise. Split
into 10 tasks of 10 classes (class-IL, in order), `--vit_train_per_task` (384) training images
per task, `--vit_epochs` (3) epochs, batch `--vit_batch` (64: SLCA's PILOT batch; L2P's PILOT
json uses 16; one batch keeps the rows comparable), `--vit_test_per_task` (100) test images per
task, evaluated untrained and after every task, one batch per task on both sides. The steps
and shapes are the protocol's; the accuracies are of a random ViT on the synthetic task.

Model: ViT-B/16 (width 768, depth 12, 12 heads, MLP 3072), a random initialisation (no
pretrained weights offline; speed does not depend on them); the 32 px images resized to 224 in
the model (`config.model.resize`; `jax.image.resize` bilinear upsampling is torch's
`interpolate(mode="bilinear", align_corners=False, antialias=False)`), mean = std = 0.5.

Cells, each in its own process (`--single=CELL --json_out=FILE`), sequax's on a fresh
compilation cache (cold): `sequax_l2p` (pool 10, length 5, top-k 5, pull 0.1, batchwise, Adam
lr 2e-3 per task; the query cache on: `cache_examples` = the task size), `sequax_l2p_nocache`
(`cache_examples=0`: a frozen ViT pass in every step, as the reference), `sequax_slca`
(`configs/vit_split_mnist.py`'s: SGD momentum 0.9, weight decay 5e-4, lr 0.01 head, x0.01
backbone; class statistics and classifier alignment at each task's end), `torch_l2p`
(`benchmarks/torch_prompt.py`'s L2P network, PILOT's batchwise selection on the device) and
`torch_slca` (`SLCANet` here: two SGD parameter groups, lr 0.01 head / 0.0001 backbone, CE over
the current task's classes; at each task's end PILOT `models/slca.py`'s `_compute_class_mean`
and `_stage2_compact_classifier`). The PyTorch loops are eager, `loss.item()` every step, a few
warm-up steps (a throw-away optimizer at lr 0) outside the timers, as sequax's compile is.

Precision (`PRECISION`): float32 storage; `--vit_precision=tf32` (default: JAX's on NVIDIA
GPUs; torch's matmul default is off) allows TF32 on both sides, `highest` forbids it on both.
Attention is the explicit softmax(QK^T)V on both sides (no fused kernel).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import ml_collections
import numpy as np
from absl import app, flags, logging

from sequax.launch import bench  # its flags: --single, --json_out, --output, --update_docs
from sequax.launch.common import define_update_docs, machine

FLAGS = flags.FLAGS
define_update_docs()


def _define(kind: str, name: str, default, help_text: str) -> None:
    """A flag of this program, unless a program imported in the same process (a test) has it."""
    if name not in FLAGS:
        getattr(flags, f"DEFINE_{kind}")(name, default, help_text)


_define("string", "results", "", "Run every cell (on the GPU machine); write the JSON here.")
_define("string", "report", "", "Read this JSON and write the vit_gpu section (--output, docs).")
_define("bool", "tiny", False, "A tiny ViT and stream on the CPU: checks the whole path.")
_define("integer", "vit_train_per_task", 384, "Training images per task.")
_define("integer", "vit_test_per_task", 100, "Test images per task (one eval batch).")
_define("integer", "vit_epochs", 3, "Epochs per task.")
_define("integer", "vit_batch", 64, "Training batch size.")
_define("string", "vit_precision", "tf32", "tf32 (TF32 matmuls on both sides) or highest.")
_define("string", "vit_cells", "", "Comma-separated cells to run (default: all).")
_define("integer", "vit_cell_timeout", 200, "Seconds before a cell is abandoned.")

REPO_ROOT = Path(__file__).resolve().parents[1]
CELLS = ("sequax_l2p", "sequax_l2p_nocache", "sequax_slca", "torch_l2p", "torch_slca")
LABELS = dict(sequax_l2p="sequax (query cache)", sequax_l2p_nocache="sequax, no cache",
              sequax_slca="sequax", torch_l2p="torch", torch_slca="torch")  # fmt: skip
L2P_HYPER = dict(pool_size=10, prompt_length=5, top_k=5, pull_coeff=0.1, batchwise_prompt=True)
NUM_CLASSES, MASKED = 100, -1e30
WARMUP_STEPS = 3
JAX_PRECISION = dict(tf32="tensorfloat32", highest="highest")
PRECISION = dict(
    tf32="TF32 matmuls on both sides (`jax_default_matmul_precision='tensorfloat32'`, JAX's "
    "default on NVIDIA GPUs; torch `allow_tf32=True`).",
    highest="full float32 matmuls on both sides (`jax_default_matmul_precision='highest'`; "
    "torch `allow_tf32=False`).",
)


@dataclasses.dataclass(frozen=True)
class Setup:
    """The stream and model of every cell (the flags, or `--tiny`'s)."""

    tiny: bool = False
    train_per_task: int = 384
    test_per_task: int = 100
    epochs: int = 3
    batch: int = 64
    precision: str = "tf32"

    num_tasks = property(lambda self: 2 if self.tiny else 10)
    classes_per_task = property(lambda self: 4 if self.tiny else 10)

    def vit(self) -> dict:
        """The ViT's sizes (`config.model` without name, mean and std)."""
        if self.tiny:
            return dict(width=32, depth=2, num_heads=2, mlp_dim=64, patch_size=8, resize=48)
        return dict(width=768, depth=12, num_heads=12, mlp_dim=3072, patch_size=16, resize=224)


TINY = Setup(tiny=True, train_per_task=16, test_per_task=8, epochs=1, batch=8)
FIELDS = ("train_per_task", "test_per_task", "epochs", "batch", "precision")  # --vit_FIELD


def setup_from_flags() -> Setup:
    if FLAGS.tiny:
        return dataclasses.replace(TINY, precision=FLAGS.vit_precision)
    return Setup(**{f: FLAGS[f"vit_{f}"].value for f in FIELDS})


def setup_flags(setup: Setup) -> list[str]:
    """The command-line flags that give a child process `setup`."""
    return ["--tiny"] * setup.tiny + [f"--vit_{f}={getattr(setup, f)}" for f in FIELDS]


def synthetic_cifar100(train_per_class: int = 500, test_per_class: int = 100, seed: int = 0):
    """An `ImageSource` of CIFAR-100's size and format: uint8 [N, 32, 32, 3], 100 classes,
    each image uniform noise blended 60/40 with its class's colour (learnable)."""
    from sequax.data import ImageSource

    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (NUM_CLASSES, 3), dtype=np.uint16)

    def images(per_class: int):
        y = np.arange(per_class * NUM_CLASSES) % NUM_CLASSES
        rng.shuffle(y)
        noise = rng.integers(0, 256, (len(y), 32, 32, 3), dtype=np.uint16)
        x = (3 * noise + 2 * colours[y][:, None, None, :]) // 5
        return x.astype(np.uint8), y.astype(np.int32)

    (train_x, train_y), (test_x, test_y) = images(train_per_class), images(test_per_class)
    return ImageSource(train_x, train_y, test_x, test_y, NUM_CLASSES, "synthetic_cifar100")


tiny_cifar100 = functools.partial(synthetic_cifar100, 8, 2)  # --tiny's: 8 + 2 per class


def make_config(method: str, setup: Setup, cache: bool = True) -> ml_collections.ConfigDict:
    """The sequax config of a cell ("l2p" or "slca"); the torch loops read the same one."""
    from sequax.configs import vit_split_mnist

    config = vit_split_mnist.make(method)
    factory = "tiny_cifar100" if setup.tiny else "synthetic_cifar100"
    config.data.source = f"benchmarks.vit_gpu:{factory}"
    config.data.scenario = "split"
    config.data.num_tasks = setup.num_tasks
    config.data.options = ml_collections.ConfigDict(dict(classes_per_task=setup.classes_per_task))
    config.data.train_per_task = setup.train_per_task
    config.data.test_per_task = setup.test_per_task
    config.model = ml_collections.ConfigDict(
        dict(name="vit", **setup.vit(), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    )
    config.seed = 0
    config.training.batch_size = setup.batch
    config.training.epochs = setup.epochs
    config.eval.batch_size = setup.test_per_task  # one batch per test set, no padding
    if method == "l2p":
        config.algorithm.update(L2P_HYPER)
        config.algorithm.cache_examples = setup.train_per_task if cache else 0
    config.checkpoint.enabled = False  # like the PyTorch loops: throughput, not resumability
    return config


def run_sequax_cell(method: str, setup: Setup, cache: bool = True) -> dict:
    import jax

    jax.config.update("jax_default_matmul_precision", JAX_PRECISION[setup.precision])
    result = bench.run_sequax(make_config(method, setup, cache))
    result.pop("eval_flops", None)
    result["device"] = str(jax.devices()[0].device_kind)
    return result


@functools.cache
def torch_parts() -> SimpleNamespace:
    """The torch modules of the loops (built on first use: sequax's cells import no torch)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from benchmarks import torch_prompt
    from benchmarks.torch_vit import TorchViT

    class DeviceViT(TorchViT):
        """`TorchViT` with its input resized to `resize` (bilinear, half-pixel: the upsampling
        of `jax.image.resize`) and normalised on the module's device (TorchViT's own mean
        and std are CPU tensors: 0-dim here, a no-op)."""

        def __init__(self, *, resize: int, mean, std, **kwargs):
            super().__init__(0, image_size=resize, **kwargs)
            self.resize, self.mean, self.std = resize, 0.0, 1.0
            self.register_buffer("mean_t", torch.tensor(mean).view(1, -1, 1, 1))
            self.register_buffer("std_t", torch.tensor(std).view(1, -1, 1, 1))

        def forward(self, x, prompts=None, prefixes=None):
            x = F.interpolate(x.permute(0, 3, 1, 2), size=(self.resize, self.resize),
                              mode="bilinear", align_corners=False, antialias=False)  # fmt: skip
            x = ((x - self.mean_t) / self.std_t).permute(0, 2, 3, 1)
            return super().forward(x, prompts, prefixes)

    def batchwise(idx, pool_size: int, top_k: int):
        """PILOT `backbone/prompt.py`'s `batchwise_prompt` branch, with its `device=`s."""
        prompt_id, id_counts = torch.unique(idx, return_counts=True, sorted=True)
        if prompt_id.shape[0] < pool_size:
            missing = pool_size - prompt_id.shape[0]
            fill = torch.full((missing,), torch.min(idx.flatten()), device=idx.device)
            prompt_id = torch.cat([prompt_id, fill])
            zeros = torch.zeros(missing, dtype=id_counts.dtype, device=idx.device)
            id_counts = torch.cat([id_counts, zeros])
        _, major_idx = torch.topk(id_counts, k=top_k)
        return prompt_id[major_idx].expand(idx.shape[0], -1)

    class L2PNet(torch_prompt.L2PNet):
        """torch_prompt's L2P network, its batchwise selection on the device."""

        def forward(self, x):
            with torch.no_grad():
                cls_features = self.vit(x)["features"]
            prompt_norm = torch_prompt.l2_normalize(self.prompt_key, dim=1)
            x_embed_norm = torch_prompt.l2_normalize(cls_features, dim=1)
            _, idx = torch.topk(x_embed_norm @ prompt_norm.t(), k=self.top_k, dim=1)
            if self.batchwise_prompt:
                idx = batchwise(idx, self.prompt.shape[0], self.top_k)
            batched = self.prompt[idx].reshape(x.shape[0], -1, self.prompt.shape[-1])
            self.reduce_sim = torch.sum(prompt_norm[idx] * x_embed_norm.unsqueeze(1)) / x.shape[0]
            tokens = self.vit(x, prompts={0: batched + self.vit.pos_embed[:, :1]})["tokens"]
            return self.head(tokens[:, 1 : 1 + batched.shape[1]].mean(dim=1))

    class SLCANet(nn.Module):
        """The ViT and a new head, all trained; evaluation reads the aligned head (if any)."""

        def __init__(self, vit, num_classes: int):
            super().__init__()
            self.vit = vit
            self.head = nn.Linear(vit.cls_token.shape[-1], num_classes)
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
            self.aligned = None

        def forward(self, x):
            features = self.vit(x)["features"]
            if not self.training and self.aligned is not None:
                return F.linear(features, *self.aligned)
            return self.head(features)

    return SimpleNamespace(torch=torch, F=F, DeviceViT=DeviceViT, L2PNet=L2PNet,
                           SLCANet=SLCANet, batchwise=batchwise,
                           big_vision_init=torch_prompt.big_vision_init)  # fmt: skip


def slca_end_task(T, net, x_task, y_task, task, stats, task_classes, algo) -> None:
    """PILOT `models/slca.py`: `_compute_class_mean` (each class's feature mean and float64
    torch.cov + 1e-4 I, stored float32; batches of `stats_batch`) then, from the second task,
    `_stage2_compact_classifier` on a copy of the head; the trained head is kept."""
    torch, F = T.torch, T.F
    net.eval()
    with torch.no_grad():
        batch = int(algo.stats_batch)
        features = torch.cat([net.vit(x_task[s : s + batch].float() / 255.0)["features"]
                              for s in range(0, len(y_task), batch)])  # fmt: skip
        eye = torch.eye(features.shape[1], device=features.device, dtype=torch.float64)
        for c in torch.unique(y_task).tolist():
            vectors = features[y_task == c]
            stats["means"][c] = vectors.mean(0)
            stats["covs"][c] = torch.cov(vectors.T.double()) + 1e-4 * eye  # no TF32
            stats["task"][c] = task
    net.train()
    if task == 0 or not int(algo.ca_epochs):
        return
    weight = net.head.weight.detach().clone().requires_grad_(True)
    bias = net.head.bias.detach().clone().requires_grad_(True)
    optimizer = torch.optim.SGD([weight, bias], lr=float(algo.ca_lr), momentum=algo.ca_momentum,
                                weight_decay=float(algo.ca_weight_decay))  # fmt: skip
    epochs, n = int(algo.ca_epochs), int(algo.num_sampled_pcls)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    seen = torch.nonzero(stats["task"] >= 0).flatten()
    columns = [torch.nonzero(task_classes[t]).flatten() for t in range(task + 1)]
    tau = float(algo.ca_with_logit_norm)
    for _ in range(epochs):
        drawn, labels = [], []
        for position, c in enumerate(seen.tolist()):
            scale = 0.9 + (int(stats["task"][c]) + 1) / (task + 1) * 0.1
            normal = torch.distributions.MultivariateNormal(
                stats["means"][c] * scale, covariance_matrix=stats["covs"][c]
            )
            drawn.append(normal.sample((n,)))
            labels += [position] * n
        order = torch.randperm(len(labels), device=x_task.device)
        inputs = torch.cat(drawn)[order]
        targets = torch.tensor(labels, device=x_task.device)[order]
        for i in range(len(seen)):
            logits = inputs[i * n : (i + 1) * n] @ weight.T + bias
            norms = torch.stack([logits[:, cols].norm(dim=-1) + 1e-7 for cols in columns], -1)
            scaled = logits[:, seen] / norms.mean(-1, keepdim=True) / tau
            loss = F.cross_entropy(scaled, targets[i * n : (i + 1) * n])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
    net.aligned = (weight.detach(), bias.detach())


def run_torch_cell(method: str, setup: Setup) -> dict:
    """The eager PyTorch loop of `method` on the GPU (the CPU when there is none: --tiny)."""
    from sequax.engine.build import build_algorithm, build_scenario
    from sequax.engine.clock import process_start
    from sequax.launch.torch_loop import loop_result, timed_row, torch_accuracy_row

    wall_start, wall_epoch = time.perf_counter(), time.time()
    T = torch_parts()
    torch, F = T.torch, T.F
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tf32 = setup.precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32  # JAX's default on NVIDIA GPUs (module doc)
    torch.backends.cudnn.allow_tf32 = tf32
    torch.manual_seed(0)
    config = make_config(method, setup)
    algo = build_algorithm(config.algorithm)  # every hyper-parameter, defaults included
    scenario = build_scenario(config.data)  # the stream sequax trains on
    sizes = setup.vit()
    vit = T.big_vision_init(T.DeviceViT(**sizes, in_chans=3, approximate_gelu=True,
                                        mean=(0.5,) * 3, std=(0.5,) * 3))  # fmt: skip
    lr = float(config.optimizer.lr)
    if method == "l2p":
        for p in vit.parameters():
            p.requires_grad = False
        model = T.L2PNet(vit.eval(), scenario.num_classes, algo).to(device)

        def optimizer_of(scale: float = 1.0):  # reinit_optimizer: a new one per task
            trainable = [p for p in model.parameters() if p.requires_grad]
            return torch.optim.Adam(trainable, lr=lr * scale, weight_decay=0.0)
    else:
        model = T.SLCANet(vit, scenario.num_classes).to(device)
        c, d = scenario.num_classes, sizes["width"]
        stats = dict(means=torch.zeros(c, d, device=device), task=torch.full((c,), -1,
                     device=device), covs=torch.zeros(c, d, d, device=device))  # fmt: skip

        def optimizer_of(scale: float = 1.0):  # two groups: the backbone 100x slower
            groups = [{"params": model.vit.parameters(),
                       "lr": lr * scale * float(algo.backbone_lr_factor)},
                      {"params": model.head.parameters(), "lr": lr * scale}]  # fmt: skip
            return torch.optim.SGD(groups, lr=lr * scale, momentum=float(config.optimizer.momentum),
                                   weight_decay=float(config.optimizer.weight_decay))  # fmt: skip

    def step(optimizer, x, y, mask) -> float:
        logits = model(x.float() / 255.0)
        logits = logits.masked_fill(~mask, float("-inf") if method == "l2p" else MASKED)
        loss = F.cross_entropy(logits, y)
        if method == "l2p":
            loss = loss - float(algo.pull_coeff) * model.reduce_sim
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()  # the references log the loss every step

    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def tensors(x, y):
        return torch.from_numpy(x).to(device), torch.from_numpy(y).long().to(device)

    tests = [tensors(*scenario.test(t)) for t in range(scenario.num_tasks)]
    task_classes = torch.tensor(np.asarray(scenario.task_classes), device=device)
    timings = {"train": 0.0, "end_task": 0.0, "eval": 0.0}

    def evaluate(p: int) -> list[float]:
        return torch_accuracy_row(model, tests, task_classes, p, setup.test_per_task,
                                  prepare=lambda x: x.float() / 255.0)  # fmt: skip

    # Warm-up outside the timers (as sequax's compile): CUDA's lazy initialisation and
    # cuBLAS's choices at the training shapes, a throw-away optimizer at lr 0 (no update).
    t0 = time.perf_counter()
    x0, y0 = tensors(*scenario.train(0))
    for _ in range(WARMUP_STEPS):
        step(optimizer_of(0.0), x0[: setup.batch], y0[: setup.batch], task_classes[0])
    sync()
    warmup = time.perf_counter() - t0
    timed_row([], evaluate, 0, timings)  # the untrained model, as sequax's loop does
    matrix, train_steps = [], 0
    for task in range(scenario.num_tasks):
        x_task, y_task = tensors(*scenario.train(task))
        optimizer = optimizer_of()
        steps = len(y_task) // setup.batch  # drop_last, as sequax
        sync()
        t0 = time.perf_counter()
        for _ in range(setup.epochs):
            order = torch.randperm(len(y_task), device=device)
            for i in range(steps):
                index = order[i * setup.batch : (i + 1) * setup.batch]
                step(optimizer, x_task[index], y_task[index], task_classes[task])
        sync()
        timings["train"] += time.perf_counter() - t0
        train_steps += steps * setup.epochs
        if method == "slca":
            t0 = time.perf_counter()
            slca_end_task(T, model, x_task, y_task, task, stats, task_classes, algo)
            sync()
            timings["end_task"] += time.perf_counter() - t0
        timed_row(matrix, evaluate, task, timings)
    return loop_result(timings, wall_start, train_steps * setup.batch, matrix, compile=warmup,
                       train_steps=train_steps, startup=wall_epoch - process_start(),
                       time_to_result=time.time() - process_start(),
                       device_peak_bytes=torch.cuda.max_memory_allocated() if cuda else None,
                       device=torch.cuda.get_device_name() if cuda else "cpu")  # fmt: skip


def run_single(cell: str, json_out: str, setup: Setup) -> None:
    """One cell (`CELLS`), in this process, its result written to `json_out`."""
    framework, method, *rest = cell.split("_")
    if framework == "sequax":
        result = run_sequax_cell(method, setup, cache=not rest)
    else:
        result = run_torch_cell(method, setup)
    result["acc"] = 100.0 * float(np.mean(result["matrix"][-1]))
    result["steps_per_s"] = result["train_steps"] / max(result["train"], 1e-9)
    busy = result["train"] + result["end_task"]
    result["work_samples_per_s"] = result["train_samples"] / busy if busy > 0 else 0.0
    result.update(cell=cell, method=method, framework=framework)
    Path(json_out).write_text(json.dumps(result, default=str))


def child(cell: str, folder: str, setup: Setup, timeout: int) -> dict | None:
    """Cell `cell` in its own process, sequax's on a fresh compilation cache."""
    out = os.path.join(folder, f"{cell}.json")
    env = {**os.environ, "SEQUAX_COMPILATION_CACHE": os.path.join(folder, f"xla_{cell}")}
    if cell.startswith("torch"):  # no JAX backend starts there; never let one preallocate
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    command = [sys.executable, "-m", "benchmarks.vit_gpu", f"--single={cell}",
               f"--json_out={out}", *setup_flags(setup)]  # fmt: skip
    try:
        done = subprocess.run(command, check=False, capture_output=True, text=True,
                              cwd=REPO_ROOT, env=env, timeout=timeout)  # fmt: skip
    except subprocess.TimeoutExpired:
        print(f"  TIMED OUT after {timeout}s", file=sys.stderr, flush=True)
        return None
    if done.returncode != 0:
        print(f"  FAILED ({done.returncode}):\n{done.stderr[-3000:]}", file=sys.stderr, flush=True)
        return None
    return json.loads(Path(out).read_text())


def run_all(path: str, setup: Setup, cells=CELLS, timeout: int = 200) -> dict:
    """Every cell, the JSON written to `path` after each."""
    info = machine()
    described = dict(dataclasses.asdict(setup), num_tasks=setup.num_tasks, vit=setup.vit(),
                     classes_per_task=setup.classes_per_task)  # fmt: skip
    results = {"info": info, "setup": described, "cells": {},
               "date": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
               "command": " ".join(["python -m benchmarks.vit_gpu", *sys.argv[1:]])}  # fmt: skip
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for cell in cells:
            t0 = time.perf_counter()
            print(f"vit_gpu {cell} ...", end=" ", flush=True)
            c = results["cells"][cell] = child(cell, folder, setup, timeout)
            said = "failed"
            if c:
                info.setdefault("gpu", c.get("device"))
                peak = c.get("device_peak_bytes")
                said = (f"{c['steps_per_s']:.2f} steps/s, {c['samples_per_s']:,.0f} samples/s, "
                        f"time to result {c['time_to_result']:.1f}s, peak "
                        f"{peak / 2**20 if peak else 0:,.0f} MiB, acc {c['acc']:.2f}%")  # fmt: skip
            print(f"{said} ({time.perf_counter() - t0:.0f}s)", flush=True)
            results["seconds"] = time.perf_counter() - start
            Path(path).write_text(json.dumps(results, indent=1, default=str))
    return results


_ratio = lambda a, b: f"{a / b:.2f}×" if a and b and a > 0 and b > 0 else "–"  # noqa: E731


def table(cells: dict) -> list[str]:
    lines = [
        "| method | run | steps/s | × torch | samples/s | with task boundaries | × torch "
        "| train s | start/end_task s | compile (torch: warm-up) s | time to result s "
        "| torch ÷ this | peak device MiB | acc % |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: |",
    ]
    for cell in CELLS:
        framework, method, *_ = cell.split("_")
        c, base = cells.get(cell), cells.get(f"torch_{method}")
        if not c:
            lines.append(f"| {method.upper()} | {LABELS[cell]} | failed |" + " |" * 11)
            continue
        other = framework == "sequax" and base
        peak = c.get("device_peak_bytes")
        lines.append(
            f"| {method.upper()} | {LABELS[cell]} | {c['steps_per_s']:.2f} "
            f"| {_ratio(c['steps_per_s'], base['steps_per_s']) if other else '–'} "
            f"| {c['samples_per_s']:,.0f} | {c['work_samples_per_s']:,.0f} "
            f"| {_ratio(c['work_samples_per_s'], base['work_samples_per_s']) if other else '–'} "
            f"| {c['train']:.1f} | {c['end_task']:.1f} | {c['compile']:.1f} "
            f"| {c['time_to_result']:.1f} "
            f"| {_ratio(base['time_to_result'], c['time_to_result']) if other else '–'} "
            f"| {f'{peak / 2**20:,.0f}' if peak else '–'} | {c['acc']:.2f} |"
        )
    return lines


LEGEND = """
- **steps/s**: training steps per second inside the training loop (no compile or warm-up, task
  boundaries or evaluation); **samples/s** = steps/s × batch; **with task boundaries**: per
  second of training plus start_task/end_task (L2P's query cache, SLCA's statistics and
  alignment; JAX's asynchronous dispatch may finish start_task's work in the first training
  dispatch). **time to result**: process start to summary. **peak device MiB**: JAX's
  `peak_bytes_in_use` / torch's `max_memory_allocated`, over the whole run. **acc %**: final
  class-IL accuracy of a random ViT on the synthetic task: both sides do the same work."""


def report(results: dict) -> str:
    info, s, cells = results["info"], results["setup"], results["cells"]
    tiny = " (**--tiny**: a plumbing check, not the benchmark)" if s.get("tiny") else ""
    vit = ", ".join(f"{k} {v}" for k, v in s.get("vit", {}).items())
    lines = [
        "## ViT-B/16 on one GPU: L2P and SLCA against plain PyTorch loops",
        "",
        "Each cell in its own process (`benchmarks/vit_gpu.py`: its docstring describes both "
        "sides), sequax's on a fresh compilation cache (cold). Command (on the GPU machine; "
        "`--report=FILE` then wrote this section here):",
        "",
        f"    {results.get('command', 'python -m benchmarks.vit_gpu')}",
        "",
        f"- {results.get('date', '?')}, cells {results.get('seconds', 0.0) / 60:.1f} min on "
        f"{info.get('gpu', '?')}{tiny}; host {info['cpu']}, {info['cores']} cores, "
        f"{info['ram_gib']:.0f} GiB RAM; Python {info['python']}, jax {info['jax']} (jaxlib "
        f"{info['jaxlib']}), torch {info['torch']}.",
        f"- Precision: float32 storage, {PRECISION[s['precision']]} Eager PyTorch; explicit "
        "softmax attention on both sides.",
        f"- Stream: synthetic images of CIFAR-100's size and format (uint8 32×32×3, 100 classes, "
        f"class-tinted noise), {s['num_tasks']} tasks × {s['classes_per_task']} classes, "
        f"{s['train_per_task']} training images per task, {s['epochs']} epochs, batch "
        f"{s['batch']}; {s['test_per_task']} test images per task, all evaluated untrained and "
        f"after each task. A **random** ViT ({vit}; no pretrained weights offline), the "
        "images resized in the model.",
        "- L2P: pool 10, length 5, top-k 5, pull 0.1, batchwise, Adam lr 2e-3. SLCA: SGD "
        "momentum 0.9, weight decay 5e-4, lr 0.01 head / 0.0001 backbone; at each task's end "
        "the class statistics and (from task 2) the classifier alignment, on both sides.",
        "",
        *table(cells),
    ]
    on, off = cells.get("sequax_l2p"), cells.get("sequax_l2p_nocache")
    if on and off:
        lines += [
            "",
            f"Frozen-feature speed-up (L2P's query cache, sequax): training steps "
            f"{_ratio(on['steps_per_s'], off['steps_per_s'])} faster with the cache "
            f"({on['steps_per_s']:.2f} against {off['steps_per_s']:.2f} steps/s); with the "
            f"task boundaries (the cache's own pass in start_task) "
            f"{_ratio(on['work_samples_per_s'], off['work_samples_per_s'])}.",
        ]
    return "\n".join([*lines, LEGEND])


def main(argv: list[str]) -> None:
    logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    setup = setup_from_flags()
    if setup.precision not in ("tf32", "highest"):
        raise app.UsageError(f"--vit_precision={setup.precision}: use tf32 or highest")
    if FLAGS.single:
        run_single(FLAGS.single, FLAGS.json_out, setup)
    elif FLAGS.report:
        paths = bench.documents(FLAGS.output, FLAGS.update_docs, REPO_ROOT)
        text = report(json.loads(Path(FLAGS.report).read_text()))
        print(text)
        bench.publish("vit_gpu", text, paths)
    elif FLAGS.results:
        cells = [c for c in FLAGS.vit_cells.split(",") if c] or list(CELLS)
        unknown = sorted(set(cells) - set(CELLS))
        if unknown:
            raise app.UsageError(f"--vit_cells: unknown {unknown}; use {', '.join(CELLS)}")
        results = run_all(FLAGS.results, setup, cells, FLAGS.vit_cell_timeout)
        if not all(results["cells"].values()):
            sys.exit("vit_gpu: a cell failed")
    else:
        raise app.UsageError("give --results=FILE (run the cells) or --report=FILE")


if __name__ == "__main__":
    app.run(main)
