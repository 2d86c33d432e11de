"""The plain PyTorch loops of the ViT suite (`benchmarks/vit.py`): L2P and SimpleCIL on a frozen
`benchmarks.torch_vit.TorchViT`, eager, float32, on the same task stream as sequax's run.

L2P, as LAMDA-PILOT `models/l2p.py` (`_init_train`), `backbone/vit_l2p.py` (`forward_features`,
`forward_head` with `head_type="prompt"`) and `backbone/prompt.py` (`Prompt.forward`), as
transcribed in tests/algorithms/test_l2p.py: the query is the frozen ViT's [CLS] feature
under `no_grad`; cosine key-query matching (`l2_normalize`), `topk`, `batchwise_prompt` (the
batch's k most chosen prompts for every example: `torch.unique` counts, `topk`); the chosen
prompts (plus the [CLS] position, the reference's expanded pos_embed) prepended right after
[CLS]; the head on the mean of the prompt tokens' outputs; the logits masked to the current
task's classes (`train_mask`), CE - `pull_coeff` * `reduce_sim`; Adam on the prompts, keys and
head, re-created each task (`reinit_optimizer`, as sequax's `optimizer.reset_each_task`).
Evaluation: the same forward (batchwise over the evaluation batch, as sequax's), logits
masked to the classes seen so far.

SimpleCIL, as LAMDA-PILOT `models/simplecil.py` (`replace_fc`) and `backbone/linears.py`
(`CosineLinear`, sigma 1): at each task, the frozen ViT's features of the task's training
examples under `no_grad`, in batches of 128, their per-class means as the rows of a cosine
classifier. There is no training step at all: its time is the feature pass (`end_task`).

The ViT is initialised as big_vision's (sequax.core.vit): Xavier-uniform dense kernels (q, k, v
each its own [D, D]), MLP biases N(0, 1e-6), position embeddings N(0, 1/D) with a zero [CLS]
position (our ViT has none), [CLS] zero, tanh GELU, LayerNorm eps 1e-6; the patch convolution
keeps torch's default. Different random draws from sequax's, so the accuracies agree in range.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.torch_vit import TorchViT
from sequax.engine.clock import process_start  # imports no JAX
from sequax.launch.torch_loop import task_stream, timed_row, torch_accuracy_row

PROTOTYPE_BATCH = 128  # PILOT simplecil.py's loader batch
NO_PROTOTYPE = -1e30  # sequax.algorithms.simplecil's score of a class without a prototype


def big_vision_init(net: TorchViT) -> TorchViT:
    """`net` re-initialised as sequax.core.vit's ViT (module docstring)."""
    width = net.cls_token.shape[-1]
    with torch.no_grad():
        for block in net.blocks:
            for chunk in block.attn.qkv.weight.split(width):
                nn.init.xavier_uniform_(chunk)
            nn.init.zeros_(block.attn.qkv.bias)
            nn.init.xavier_uniform_(block.attn.proj.weight)
            nn.init.zeros_(block.attn.proj.bias)
            for fc in (block.mlp.fc1, block.mlp.fc2):
                nn.init.xavier_uniform_(fc.weight)
                nn.init.normal_(fc.bias, std=1e-6)
        nn.init.normal_(net.pos_embed, std=1 / math.sqrt(width))
        net.pos_embed[:, :1] = 0.0
        net.cls_token.zero_()
    return net


def frozen_vit(config) -> TorchViT:
    """The config's ViT sizes, float32, every parameter frozen."""
    m = config.model
    net = TorchViT(0, image_size=28, patch_size=int(m.patch_size), width=int(m.width),
                   depth=int(m.depth), num_heads=int(m.num_heads), mlp_dim=int(m.mlp_dim),
                   approximate_gelu=True)  # fmt: skip
    net = big_vision_init(net).float().eval()
    for p in net.parameters():
        p.requires_grad = False
    return net


def l2_normalize(x, dim):
    """The references' `l2_normalize`: x * rsqrt(max(sum(x^2), 1e-12))."""
    square_sum = torch.sum(x**2, dim=dim, keepdim=True)
    return x * torch.rsqrt(torch.clamp(square_sum, min=1e-12))


def batchwise(idx: torch.Tensor, pool_size: int, top_k: int) -> torch.Tensor:
    """`Prompt.forward`'s `batchwise_prompt` branch."""
    prompt_id, id_counts = torch.unique(idx, return_counts=True, sorted=True)
    if prompt_id.shape[0] < pool_size:
        fill = torch.full((pool_size - prompt_id.shape[0],), torch.min(idx.flatten()))
        prompt_id = torch.cat([prompt_id, fill])
        id_counts = torch.cat([id_counts, torch.zeros(pool_size - id_counts.shape[0]).long()])
    _, major_idx = torch.topk(id_counts, k=top_k)
    return prompt_id[major_idx].expand(idx.shape[0], -1)


class L2PNet(nn.Module):
    """PILOT's `PromptVitNet` with the prompt-pool ViT; `forward` returns the logits (and keeps
    the last `reduce_sim` for the loss)."""

    def __init__(self, vit: TorchViT, num_classes: int, algo):
        super().__init__()
        self.vit, self.top_k = vit, int(algo.top_k)
        self.batchwise_prompt = bool(algo.batchwise_prompt)
        pool, length, width = int(algo.pool_size), int(algo.prompt_length), vit.cls_token.shape[-1]
        self.prompt = nn.Parameter(torch.empty(pool, length, width).uniform_(-1, 1))
        self.prompt_key = nn.Parameter(torch.empty(pool, width).uniform_(-1, 1))
        self.head = nn.Linear(width, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)  # timm's init_weights_vit_timm
        nn.init.zeros_(self.head.bias)
        self.reduce_sim = None

    def forward(self, x):
        with torch.no_grad():
            cls_features = self.vit(x)["features"]  # original_backbone(x)["pre_logits"]
        prompt_norm = l2_normalize(self.prompt_key, dim=1)
        x_embed_norm = l2_normalize(cls_features, dim=1)
        similarity = x_embed_norm @ prompt_norm.t()
        _, idx = torch.topk(similarity, k=self.top_k, dim=1)
        if self.batchwise_prompt:
            idx = batchwise(idx, self.prompt.shape[0], self.top_k)
        batched_prompt = self.prompt[idx].reshape(x.shape[0], -1, self.prompt.shape[-1])
        self.reduce_sim = torch.sum(prompt_norm[idx] * x_embed_norm.unsqueeze(1)) / x.shape[0]
        prompts = batched_prompt + self.vit.pos_embed[:, :1]  # the [CLS] position (zero here)
        tokens = self.vit(x, prompts={0: prompts})["tokens"]
        return self.head(tokens[:, 1 : 1 + batched_prompt.shape[1]].mean(dim=1))


class CosineNet(nn.Module):
    """PILOT's `SimpleVitNet` with `CosineLinear` (sigma 1): cosine to the class prototypes."""

    def __init__(self, vit: TorchViT, num_classes: int):
        super().__init__()
        self.vit = vit
        self.register_buffer("prototypes", torch.zeros(num_classes, vit.cls_token.shape[-1]))
        self.register_buffer("has", torch.zeros(num_classes, dtype=torch.bool))

    def forward(self, x):
        features = self.vit(x)["features"]
        logits = F.linear(
            F.normalize(features, p=2, dim=1), F.normalize(self.prototypes, p=2, dim=1)
        )
        return logits.masked_fill(~self.has, NO_PROTOTYPE)

    @torch.no_grad()
    def replace_fc(self, x_task, y_task) -> None:
        """The per-class means of the task's features, batches of 128 under `no_grad`."""
        features = torch.cat(
            [self.vit(x_task[s : s + PROTOTYPE_BATCH])["features"]
             for s in range(0, len(y_task), PROTOTYPE_BATCH)]
        )  # fmt: skip
        for c in torch.unique(y_task).tolist():
            self.prototypes[c] = features[y_task == c].mean(0)
            self.has[c] = True


def run_torch(config, threads: int = 1) -> dict:
    """The eager loop of `config.algorithm.name` ("l2p" or "simplecil") on `config`'s stream,
    on `threads` threads (0: torch's default, every core)."""
    wall_start, wall_start_epoch = time.perf_counter(), time.time()
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    scenario = task_stream(config)
    algo, name = config.algorithm, config.algorithm.name

    def tensors(x, y):
        return torch.from_numpy(x.astype(np.float32) / 255.0), torch.from_numpy(y).long()

    vit = frozen_vit(config)
    if name == "l2p":
        model = L2PNet(vit, scenario.num_classes, algo)
    elif name == "simplecil":
        model = CosineNet(vit, scenario.num_classes)
    else:
        raise ValueError(f"torch_prompt runs l2p or simplecil, not {name!r}")
    tests = [tensors(*scenario.test(t)) for t in range(scenario.num_tasks)]
    task_classes = torch.tensor(scenario.task_classes)

    def evaluate(p: int) -> list[float]:
        return torch_accuracy_row(model, tests, task_classes, p, int(config.eval.batch_size))

    evaluate(0)  # the untrained model, as sequax's loop does
    timings = {"train": 0.0, "end_task": 0.0, "eval": 0.0}
    matrix, train_samples = [], 0
    batch_size, lr = int(config.training.batch_size), float(config.optimizer.lr)
    for task in range(scenario.num_tasks):
        x_task, y_task = tensors(*scenario.train(task))
        if name == "simplecil":
            t0 = time.perf_counter()
            model.eval()
            model.replace_fc(x_task, y_task)
            model.train()
            timings["end_task"] += time.perf_counter() - t0
            train_samples += len(y_task)
            timed_row(matrix, evaluate, task, timings)
            continue
        train_mask = task_classes[task]
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(trainable, lr=lr, weight_decay=0.0)  # reinit_optimizer
        steps = len(y_task) // batch_size  # drop_last, as sequax
        t0 = time.perf_counter()
        for _ in range(int(config.training.epochs)):
            order = torch.randperm(len(y_task), generator=generator)
            for i in range(steps):
                index = order[i * batch_size : (i + 1) * batch_size]
                logits = model(x_task[index]).masked_fill(~train_mask, float("-inf"))
                loss = F.cross_entropy(logits, y_task[index])
                loss = loss - float(algo.pull_coeff) * model.reduce_sim
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                loss.item()  # the reference logs the loss every step
            train_samples += steps * batch_size
        timings["train"] += time.perf_counter() - t0
        timed_row(matrix, evaluate, task, timings)
    timings["wall"] = time.perf_counter() - wall_start
    return dict(
        samples_per_s=train_samples / max(timings["train"], 1e-9) if timings["train"] else 0.0,
        train_samples=train_samples,
        time_to_result=time.time() - process_start(),  # sequax's clock: process start to here
        startup=wall_start_epoch - process_start(),
        threads=torch.get_num_threads(),
        matrix=matrix,
        **timings,
    )
