"""An offline pretraining recipe: a small ViT trained on Fashion-MNIST, saved as a big_vision
`.npz`, for the pretrained-model methods to start from on this machine (issue 19, item 5).

    python -m benchmarks.vit_pretrain --pretrain_out=runs/vit_pretrain/fmnist_vit.npz
    python -m benchmarks.vit_pretrain --pretrain_epochs=1 --pretrain_examples=5000 \
        --pretrain_out=/tmp/v.npz  # quick

Nothing can be downloaded here, so the "pretrained" ViT is made here: the 60,000 Fashion-MNIST
training images (../shared/data), a ViT of width 64, depth 4, 4 heads, MLP 128, 4x4 patches
(49 tokens and [CLS] at 28 px), Adam with a cosine decay, batch 128, in one compiled epoch
program (`lax.scan` over the batches, the images resident on the device). It prints the
Fashion-MNIST test accuracy, writes the checkpoint with `sequax.engine.vit_weights.save_npz`
(and its figures beside it, `<out>.json`), and reads it back through the same loader a
config's `model.weights` uses, checking the reloaded network's test logits equal the trained
one's.

The continual-learning runs then load it (`configs/vit_split_mnist.py`), and
`benchmarks/vit_table.py` puts every pretrained-model method beside the same ViT trained from
scratch (docs/pretrained.md).
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from sequax.data import load_source
from sequax.engine.schema import DATA_ROOT

SIZES = dict(width=64, depth=4, num_heads=4, mlp_dim=128, patch_size=4)
DEFAULT_OUT = "runs/vit_pretrain/fmnist_vit.npz"

FLAGS = flags.FLAGS
# Prefixed: absl flags are one namespace per process, and tests import several programs.
flags.DEFINE_string("pretrain_out", DEFAULT_OUT, "where to write the big_vision-format .npz")
flags.DEFINE_integer("pretrain_epochs", 5, "passes over the Fashion-MNIST training set")
flags.DEFINE_integer("pretrain_examples", 0, "0: all 60,000; else the first N (a quick run)")
flags.DEFINE_float("pretrain_lr", 1e-3, "Adam's peak learning rate (cosine decay to 0)")
flags.DEFINE_integer("pretrain_seed", 0, "initialisation and shuffling")


def pretrain(
    out: str,
    epochs: int = 5,
    train_examples: int = 0,
    lr: float = 1e-3,
    seed: int = 0,
    test_examples: int = 10_000,
    sizes: dict | None = None,
) -> dict:
    """Trains the ViT (`SIZES`, or `sizes`), writes `out`, reloads it; returns the figures it
    printed (the test accuracy over the first `test_examples` test images)."""
    sizes = dict(sizes or SIZES)
    from sequax.core.vit import vit
    from sequax.engine.vit_weights import pretrained_vit, save_npz

    start = time.perf_counter()
    source = load_source("fashion_mnist", DATA_ROOT)
    x, y = source.train_x, source.train_y
    if train_examples:
        x, y = x[:train_examples], y[:train_examples]
    batch = 128
    steps = len(y) // batch
    model = vit(10, head_zeroinit=False, **sizes)
    images = jnp.asarray(x)
    labels = jnp.asarray(y, jnp.int32)
    params, _ = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, *x.shape[1:]), jnp.float32))
    tx = optax.adam(optax.cosine_decay_schedule(lr, epochs * steps))
    opt_state = tx.init(params)

    def loss_fn(p, xb, yb):
        logits = model.apply(p, {}, xb.astype(jnp.float32) / 255.0, train=True)[0]["logits"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    @jax.jit
    def epoch(params, opt_state, key, images, labels):  # data as arguments, not constants
        order = jax.random.permutation(key, len(y))[: steps * batch].reshape(steps, batch)

        def step(carry, idx):
            p, s = carry
            value, grads = jax.value_and_grad(loss_fn)(p, images[idx], labels[idx])
            updates, s = tx.update(grads, s, p)
            return (optax.apply_updates(p, updates), s), value

        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), order)
        return params, opt_state, losses.mean()

    @jax.jit
    def logits_of(p, xb):
        return model.apply(p, {}, xb.astype(jnp.float32) / 255.0, train=False)[0]["logits"]

    def test_logits(p, net=logits_of):
        chunk = min(1000, test_examples)
        return np.concatenate(
            [
                np.asarray(net(p, source.test_x[i : i + chunk]))
                for i in range(0, test_examples, chunk)
            ]
        )

    for e in range(epochs):
        key = jax.random.PRNGKey(seed * 1000 + e)
        params, opt_state, loss = epoch(params, opt_state, key, images, labels)
        print(f"epoch {e + 1}/{epochs}: train loss {float(loss):.4f}", flush=True)
    trained = test_logits(params)
    accuracy = float((trained.argmax(1) == source.test_y[:test_examples]).mean())
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    save_npz(params, out)
    reloaded_model = pretrained_vit(10, out, load_head=True, **sizes)
    reloaded, _ = reloaded_model.init(jax.random.PRNGKey(1), jnp.zeros((1, 28, 28, 1)))
    reload_logits = test_logits(
        reloaded,
        jax.jit(lambda p, xb: reloaded_model.apply(p, {}, xb / 255.0, train=False)[0]["logits"]),
    )
    gap = float(np.max(np.abs(reload_logits - trained)))
    figures = {
        "test_accuracy": accuracy,
        "reload_max_abs_logit_gap": gap,
        "seconds": time.perf_counter() - start,
        "train_examples": len(y),
        "epochs": epochs,
        "out": out,
    }
    figures["finished_utc"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    with open(out + ".json", "w") as f:  # read by benchmarks/vit_table.py for its header
        json.dump(figures, f, indent=1)
    print(
        f"Fashion-MNIST test accuracy {100 * accuracy:.2f} %; wrote {out}; reloaded logits "
        f"differ by at most {gap:.2e}; {figures['seconds']:.0f} s",
        flush=True,
    )
    return figures


def main(argv):
    del argv
    figures = pretrain(
        FLAGS.pretrain_out,
        FLAGS.pretrain_epochs,
        FLAGS.pretrain_examples,
        FLAGS.pretrain_lr,
        FLAGS.pretrain_seed,
    )
    if figures["reload_max_abs_logit_gap"] > 1e-5:
        print("the reloaded checkpoint does not give the trained network's logits", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
