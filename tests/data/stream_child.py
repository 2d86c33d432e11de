"""Child process of test_pipelines.py: the streaming path on however many (fake) devices it got.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python stream_child.py OUT.npz

Saves (1) the chunks a phase stream puts on a (data 4, fsdp 2) mesh, with each chunk's
global shape, its sharding spec and every device's own rows, and (2) the final parameters
and accuracy matrix of a short Split-MNIST run through each pipeline on the default mesh.
"""

from __future__ import annotations

import sys
import tempfile
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np

from sequax.configs import common
from sequax.engine import loop, sharding
from sequax.engine.stream import Feed

jax.config.update("jax_disable_most_optimizations", True)  # as in conftest: fast compiles

BATCH, CHUNK, EXAMPLES = 16, 3, 120


def chunks_on_mesh(results: dict) -> None:
    mesh = sharding.make_mesh(data=4, fsdp=2)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (EXAMPLES, 28, 28, 1), dtype=np.uint8)
    y = np.arange(EXAMPLES, dtype=np.int32)  # labels name the example: rows can be checked
    feed = Feed(mesh, BATCH, CHUNK, capacity=128, epochs=2, order="shuffle", prefetch=2)
    stream = feed.start_phase(
        x, y, np.zeros(EXAMPLES, np.int32), SimpleNamespace(step=jnp.int32(0)), phase=0
    )
    ys, counts = [], []
    for c in range(4):  # 7 steps per epoch in chunks of 3: counts 3, 3, 1, then epoch 2
        element = stream.next_chunk()
        batches = element["batches"]
        results[f"shape{c}"] = np.array(batches["x"].shape)
        results[f"spec{c}"] = np.array(str(batches["x"].sharding.spec))
        # every device holds rows [2k, 2k + 2) of each batch, the rows its position assigns
        rows_ok = all(
            np.array_equal(np.asarray(shard.data), np.asarray(batches["y"])[shard.index])
            and shard.data.shape == (CHUNK, BATCH // 8)
            for shard in batches["y"].addressable_shards
        )
        results[f"rows_ok{c}"] = np.array(rows_ok)
        results[f"x_ok{c}"] = np.array(
            np.array_equal(
                np.asarray(batches["x"]),
                x[np.asarray(batches["y"])]
                * (np.arange(CHUNK) < element["count"])[:, None, None, None, None],
            )
        )
        ys.append(np.asarray(batches["y"]))
        counts.append(element["count"])
    stream.close()
    results["ys"], results["counts"] = np.stack(ys), np.array(counts)


def run_config(pipeline: str):
    config = common.der_config("split", "er", 0.1, capacity=32, replay_batch=16)
    config.data.source = "mnist_packaged"
    config.data.num_tasks = 2
    config.data.train_per_task = 160
    config.data.test_per_task = 64
    config.model.widths = (16,)
    config.training.batch_size = BATCH  # 2 examples per device
    config.training.steps_per_dispatch = 4
    config.data.pipeline = pipeline
    return config


def main(out: str) -> None:
    results = {"devices": np.array(jax.device_count())}
    chunks_on_mesh(results)
    for pipeline in ("device", "stream"):
        with tempfile.TemporaryDirectory() as workdir:
            result = loop.run(run_config(pipeline), workdir, verbose=False)
        results[f"{pipeline}/class_il"] = result.class_il
        results[f"{pipeline}/params"] = np.concatenate(
            [np.asarray(p).ravel() for p in jax.tree.leaves(result.state.params)]
        )
    np.savez(out, **results)


if __name__ == "__main__":
    main(sys.argv[1])
