"""Paired single-seed runs of torch_compare's ResNet-18 λ = 0 cell: evidence that the torch
and flax ResNet-18s differ by seed noise only (docs/torch_bridge.md, after the compare table).

    python -m evidence.torch_paired --seeds=0,1,2,3,4,5,6,7,8,9,10,11

Split MNIST, 5 tasks, 1,000 training / 300 test examples per task, batch 10, one epoch, SGD
lr 0.01, naive fine-tuning (EWC at λ 0), nf 8: the budget of `torch_compare`'s cells. For each
seed s, four networks see the same batches in the same order, one seed at a time, outside
`engine.loop` (so nothing but the network differs):
  from_torch   the flax ResNet-18 starting from the torch ResNet-18's draw for seed s
               (`resnet18(init_from="torch")`)
  torch        the torch ResNet-18 through the bridge, the same draw
  from_torch'  from_torch with every weight scaled by (1 + 1e-6 N(0, 1)): how far a
               rounding-sized change moves a seed's result
  flax         the flax ResNet-18's own draw for seed s
Prints per seed each network's task-IL average accuracy (%) and its per-task accuracies.
About a minute a seed on the 2-core CPU; not in the test suite (the pieces it uses are:
tests/engine/test_torch_to_flax.py).
"""

from __future__ import annotations

import time

import jax
import numpy as np
import optax
import torch
from absl import app, flags

from evidence import torch_compare as tc
from sequax import algorithms
from sequax.core.models import resnet18
from sequax.core.state import create_state
from sequax.engine.build import build_scenario
from sequax.engine.step import make_train_step
from sequax.engine.torch_bridge import from_torch, zoo

_SEEDS = flags.DEFINE_list("seeds", ["0", "1"], "Seeds, one paired run each.")


def main(argv):
    del argv
    torch.set_num_threads(1)
    cfg = tc.cell_config(
        "flax_resnet18",
        "ewc",
        source="mnist",
        tasks=5,
        train_per_task=1000,
        test_per_task=300,
        seeds=1,
        nf=8,
        capacity=200,
        lr=0.01,
        ewc_lam=0.0,
    )
    sc = build_scenario(cfg.data)
    train = [sc.train(t) for t in range(5)]
    test = [sc.test(t) for t in range(5)]
    classes = np.asarray(sc.task_classes)
    naive, tx = algorithms.make("naive"), optax.sgd(0.01)
    x0 = train[0][0][:10].astype(np.float32) / 255
    models = {
        "from_torch": resnet18(10, nf=8, init_from="torch"),
        "torch": from_torch(
            zoo.resnet18_reduced(num_classes=10, nf=8, in_channels=1), x0, reinit=True
        ),
        "flax": resnet18(10, nf=8),
    }
    steps = {k: jax.jit(make_train_step(m, naive, tx)) for k, m in models.items()}
    evals = {
        k: jax.jit(lambda p, s, x, m=m: m.apply(p, s, x, train=False)[0]["logits"])
        for k, m in models.items()
    }
    for seed in map(int, _SEEDS.value):
        t0 = time.time()
        ex = {"x": x0, "y": train[0][1][:10].astype(np.int32), "task": np.zeros(10, np.int32)}
        states = {k: create_state(m, naive, tx, ex, seed) for k, m in models.items()}
        p = states["from_torch"].params
        leaves, tree = jax.tree.flatten(p)
        keys = jax.random.split(jax.random.PRNGKey(1000 + seed), len(leaves))
        states["from_torch'"] = states["from_torch"]._replace(
            params=jax.tree.unflatten(
                tree, [v * (1 + 1e-6 * jax.random.normal(k, v.shape)) for v, k in zip(leaves, keys)]
            )
        )
        rng = np.random.default_rng(seed)
        for t in range(5):
            x, y = train[t]
            order = rng.permutation(len(y))
            for b in range(len(y) // 10):
                i = order[10 * b : 10 * (b + 1)]
                batch = {
                    "x": x[i].astype(np.float32) / 255,
                    "y": y[i].astype(np.int32),
                    "task": np.full(10, t, np.int32),
                }
                for k in states:
                    states[k] = steps[k.rstrip("'")](states[k], batch)[0]
        out = []
        for k, s in states.items():
            acc = []
            for t in range(5):
                x, y = test[t]
                logits = np.asarray(
                    evals[k.rstrip("'")](s.params, s.model_state, x.astype(np.float32) / 255)
                )
                logits = np.where(classes[t], logits, -np.inf)
                acc.append((logits.argmax(-1) == y).mean())
            out.append(f"{k} {100 * np.mean(acc):.2f} [{' '.join(f'{100 * a:.0f}' for a in acc)}]")
        print(f"seed {seed}: " + " | ".join(out), f"({time.time() - t0:.0f}s)", flush=True)


if __name__ == "__main__":
    app.run(main)
