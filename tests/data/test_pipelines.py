"""The streaming path: grain chunks from arrays and torch Datasets, into sharded device arrays,
through the same step as the on-device path.

What each test shows:
  * the stream, fed the on-device path's permutations, trains a Split-MNIST run (naive, ER)
    to the identical accuracy matrix, parameters and logged losses; a different order
    changes them (so the equality is not vacuous);
  * 1 or 2 grain worker processes give the same chunks as none;
  * a saved iterator state resumes mid-phase on exactly the remaining chunks, on the host
    pipeline (with a worker) and behind the device prefetch thread;
  * a tiny custom torch Dataset (tensors, PIL images, [C, H, W] floats) streams its
    records correctly, and a TensorDataset gives the same chunks as the per-record path;
  * process-local reads (ShardOptions) of every batch reassemble the global batch;
  * on 8 fake CPU devices the chunks are global [K, B, ...] arrays split over the batch
    axes with the right rows on each device, and a streamed run equals the on-device run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sequax.configs import common
from sequax.data import DataError, load_packaged_mnist
from sequax.data.pipelines import (
    ArraySource,
    ChunkPlan,
    FixedOrder,
    RecordSource,
    ShuffledOrder,
    as_map_dataset,
    as_source,
    chunk_dataset,
)
from sequax.engine import loop, sharding
from sequax.engine.build import ConfigError
from sequax.engine.stream import Feed, make_feed

CHILD = Path(__file__).with_name("stream_child.py")


def small_config(algorithm: str, pipeline: str, **hyper):
    config = common.der_config("split", algorithm, 0.1, **hyper)
    config.data.source = "mnist_packaged"
    config.data.train_per_task = 200
    config.data.test_per_task = 100
    config.model.widths = (32,)
    config.training.batch_size = 10
    config.training.steps_per_dispatch = 7  # 20 steps per task: chunks of 7, 7, 6
    config.data.pipeline = pipeline
    return config


def run(config, workdir: Path):
    result = loop.run(config, workdir, verbose=False)
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    losses = [json.loads(line)["loss"] for line in lines if json.loads(line)["kind"] == "train"]
    return result, losses


def flat_params(result) -> np.ndarray:
    return np.concatenate([np.asarray(p).ravel() for p in jax.tree.leaves(result.state.params)])


@pytest.mark.parametrize(
    "algorithm, hyper", [("naive", {}), ("er", dict(capacity=50, replay_batch=10))]
)
def test_stream_equals_device_path_for_the_same_order(tmp_path, algorithm, hyper):
    device, device_losses = run(small_config(algorithm, "device", **hyper), tmp_path / "device")
    stream, stream_losses = run(small_config(algorithm, "stream", **hyper), tmp_path / "stream")
    np.testing.assert_array_equal(stream.class_il, device.class_il)
    np.testing.assert_array_equal(stream.task_il, device.task_il)
    np.testing.assert_array_equal(flat_params(stream), flat_params(device))
    assert stream_losses == device_losses and len(stream_losses) == 5 * 3  # 5 tasks x 3 chunks
    assert np.nanmean(device.class_il[-1]) > 0.15  # it learned something (not a trivial equality)
    if algorithm == "naive":  # another order trains differently: the equality above is not vacuous
        config = small_config(algorithm, "stream", **hyper)
        config.data.stream.order = "shuffle"
        shuffled, _ = run(config, tmp_path / "shuffled")
        assert not np.array_equal(flat_params(shuffled), flat_params(device))


def mnist_source(n: int = 200) -> ArraySource:
    mnist = load_packaged_mnist()
    return ArraySource(mnist.train_x[:n], mnist.train_y[:n], np.arange(n, dtype=np.int32) % 5)


def all_chunks(iterator) -> list[dict]:
    return [dict(chunk) for chunk in iterator]


def assert_same_chunks(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for one, two in zip(a, b):
        assert one["count"] == two["count"]
        for key in ("x", "y", "task"):
            np.testing.assert_array_equal(one[key], two[key])


def test_plan_reads_every_epoch_in_order_and_drops_the_partial_batch():
    source = mnist_source(95)  # 9 full batches of 10 per epoch; 5 examples dropped
    order = ShuffledOrder(95, seed=(3,))
    plan = ChunkPlan(order, batch_size=10, steps=9, epochs=2, chunk=4)
    chunks = all_chunks(chunk_dataset(source, plan))
    assert [c["count"] for c in chunks] == [4, 4, 1, 4, 4, 1]
    assert chunks[0]["x"].shape == (4, 10, 28, 28, 1) and chunks[0]["x"].dtype == np.uint8
    for epoch in range(2):
        read = np.concatenate(
            [c["y"][: c["count"]].ravel() for c in chunks[3 * epoch : 3 * epoch + 3]]
        )
        np.testing.assert_array_equal(read, source.y[order.epoch(epoch)[:90]])
    assert not np.array_equal(order.epoch(0), order.epoch(1))  # each epoch reshuffles
    assert not chunks[2]["x"][1:].any()  # the last chunk's padding rows are zeros


def test_workers_give_the_same_chunks_as_none():
    source = mnist_source()
    plan = ChunkPlan(
        ShuffledOrder(len(source), seed=(0, 1)), batch_size=8, steps=25, epochs=1, chunk=4
    )
    reference = all_chunks(chunk_dataset(source, plan))
    with_workers = chunk_dataset(source, plan, workers=2).__iter__()
    try:
        assert_same_chunks(all_chunks(with_workers), reference)
    finally:
        with_workers.close()


@pytest.mark.parametrize("workers", [0, 1])
def test_saved_iterator_state_resumes_on_the_remaining_chunks(workers):
    source = mnist_source()
    plan = ChunkPlan(
        ShuffledOrder(len(source), seed=(7,)), batch_size=10, steps=20, epochs=2, chunk=3
    )
    first = iter(chunk_dataset(source, plan, workers=workers))
    head = [next(first) for _ in range(5)]  # mid-epoch 0 (7 chunks per epoch)
    state = json.loads(json.dumps(first.get_state()))  # a checkpoint stores it as JSON
    rest = all_chunks(first)
    resumed = iter(chunk_dataset(source, plan, workers=workers))
    resumed.set_state(state)
    try:
        assert_same_chunks(all_chunks(resumed), rest)
        assert len(rest) == len(plan) - 5 and head[0]["count"] == 3
    finally:
        first.close()
        resumed.close()


def test_device_stream_state_is_the_position_of_the_last_chunk_used():
    """The prefetch thread runs ahead; the saved state must still point after the last
    chunk handed out, so a resumed stream continues exactly there."""
    mesh = sharding.make_mesh()
    source = mnist_source(120)
    state = SimpleNamespace(key=jax.random.PRNGKey(0), step=jnp.int32(40))
    feed = Feed(mesh, batch_size=10, chunk=2, capacity=120, epochs=2, order="device", prefetch=3)
    stream = feed.start_phase(source.x, source.y, source.task, state, phase=1)
    for _ in range(3):
        stream.next_chunk()
    time.sleep(0.5)  # let the prefetch thread run ahead of the chunks handed out
    saved = stream.get_state()
    rest = [np.asarray(stream.next_chunk()["batches"]["y"]) for _ in range(9)]  # 6 chunks per epoch
    stream.close()
    assert saved["phase"] == 1 and saved["start_step"] == 40
    later = SimpleNamespace(
        key=state.key, step=jnp.int32(46)
    )  # mid-phase: the order needs start_step
    resumed = feed.start_phase(source.x, source.y, source.task, later, phase=1, resume=saved)
    again = [np.asarray(resumed.next_chunk()["batches"]["y"]) for _ in range(9)]
    resumed.close()
    for a, b in zip(rest, again):
        np.testing.assert_array_equal(a, b)
    # order="device": epoch e reads epoch_order(key, start_step + e * steps), as the device path
    from sequax.engine.step import epoch_order

    expected = np.asarray(epoch_order(state.key, jnp.int32(40 + 12), jnp.int32(120), 120))[:120]
    np.testing.assert_array_equal(np.concatenate([r.ravel() for r in rest[3:]]), source.y[expected])


def test_process_local_reads_reassemble_the_global_batch():
    source = mnist_source()
    order = ShuffledOrder(len(source), seed=(1,))
    whole = all_chunks(
        chunk_dataset(source, ChunkPlan(order, batch_size=8, steps=12, epochs=1, chunk=5))
    )
    parts = [
        all_chunks(
            chunk_dataset(
                source,
                ChunkPlan(
                    order,
                    batch_size=8,
                    steps=12,
                    epochs=1,
                    chunk=5,
                    shard=grain.sharding.ShardOptions(p, 2),
                ),
            )
        )
        for p in range(2)
    ]
    for c, chunk in enumerate(whole):
        np.testing.assert_array_equal(
            np.concatenate([parts[0][c]["y"], parts[1][c]["y"]], axis=1), chunk["y"]
        )
        assert parts[0][c]["x"].shape == (5, 4, 28, 28, 1)
    with pytest.raises(DataError, match="does not split over 3 processes"):
        ChunkPlan(
            order,
            batch_size=8,
            steps=12,
            epochs=1,
            chunk=5,
            shard=grain.sharding.ShardOptions(0, 3),
        )


try:
    import torch
except ImportError:  # torch is optional: the tests below that need it are skipped
    torch = None
needs_torch = pytest.mark.skipif(
    torch is None, reason="torch is not installed (optional); these tests read torch Datasets"
)


class TinyDigits(torch.utils.data.Dataset if torch else object):
    """A user's own Dataset: item i is (image, label) in one of three forms, by `form`."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, form: str):
        self.images, self.labels, self.form = images, labels, form

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        image = self.images[i, ..., 0]  # [H, W] uint8
        if self.form == "tensor":  # uint8 tensor [H, W], label a 0-d tensor
            return torch.from_numpy(image.copy()), torch.tensor(int(self.labels[i]))
        if self.form == "pil":
            from PIL import Image

            return Image.fromarray(image), int(self.labels[i])
        # torchvision ToTensor's layout: float [1, H, W] in [0, 1]
        return torch.from_numpy(image[None].astype(np.float32) / 255.0), np.int64(self.labels[i])


@needs_torch
@pytest.mark.parametrize("form", ["tensor", "pil", "float_chw"])
def test_torch_dataset_streams_its_records(form):
    mnist = mnist_source(60)
    dataset = TinyDigits(np.asarray(mnist.x), mnist.y, form)
    source = as_source(dataset, task=2)
    assert isinstance(source, RecordSource)
    plan = ChunkPlan(ShuffledOrder(60, seed=(5,)), batch_size=6, steps=10, epochs=1, chunk=4)
    chunks = all_chunks(chunk_dataset(source, plan))
    expected = all_chunks(chunk_dataset(mnist, plan))
    for got, want in zip(chunks, expected):
        np.testing.assert_array_equal(got["y"], want["y"])
        assert (got["task"][: got["count"]] == 2).all()
        if form == "float_chw":  # [1, H, W] floats -> [H, W, 1] float32, values kept
            assert got["x"].dtype == np.float32
            np.testing.assert_allclose(got["x"], want["x"] / np.float32(255.0))
        else:
            np.testing.assert_array_equal(got["x"], want["x"])
    record = as_map_dataset(dataset)[3]  # the per-record grain MapDataset
    assert record["x"].shape == (28, 28, 1) and record["y"] == mnist.y[3]


@needs_torch
def test_tensor_dataset_is_gathered_like_the_per_record_path():
    mnist = mnist_source(40)
    chw = torch.from_numpy(np.moveaxis(np.asarray(mnist.x), -1, 1).copy())  # [N, 1, H, W] uint8
    tensors = as_source(
        torch.utils.data.TensorDataset(chw, torch.from_numpy(mnist.y.astype(np.int64)))
    )
    records = as_source(TinyDigits(np.asarray(mnist.x), mnist.y, "tensor"))
    assert isinstance(tensors, ArraySource) and tensors.x.shape == (40, 28, 28, 1)
    plan = ChunkPlan(
        FixedOrder(np.stack([np.arange(40)[::-1]])), batch_size=5, steps=8, epochs=1, chunk=8
    )
    assert_same_chunks(
        all_chunks(chunk_dataset(tensors, plan)), all_chunks(chunk_dataset(records, plan))
    )


@needs_torch
def test_bad_datasets_and_configs_fail_with_the_fix():
    class Bare(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return torch.zeros(2, 2, 2, 2)

    with pytest.raises(DataError, match=r"must return \(image, label\)"):
        RecordSource(Bare())
    with pytest.raises(DataError, match="no __len__"):
        RecordSource(iter([1, 2]))
    config = small_config("naive", "fast")
    with pytest.raises(ConfigError, match="pipeline='fast' is unknown"):
        make_feed(config, sharding.make_mesh(), 10, 300)
    config = small_config("naive", "stream")
    with pytest.raises(ConfigError, match="feeds one run"):
        make_feed(config, sharding.make_mesh(), 10, 300, runs=True)
    config.data.stream.order = "random"
    with pytest.raises(ConfigError, match="order='random' is unknown"):
        make_feed(config, sharding.make_mesh(), 10, 300)


def test_chunks_are_sharded_global_arrays_on_eight_devices(tmp_path):
    env = dict(
        os.environ,
        XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8",
        JAX_PLATFORMS="cpu",
    )
    out = tmp_path / "eight.npz"
    done = subprocess.run(
        [sys.executable, str(CHILD), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    eight = dict(np.load(out))
    assert int(eight["devices"]) == 8
    assert eight["counts"].tolist() == [3, 3, 1, 3]  # 7 steps of 16 from 120 examples, chunks of 3
    for c in range(4):
        assert eight[f"shape{c}"].tolist() == [3, 16, 28, 28, 1]
        assert str(eight[f"spec{c}"]) == "P(None, ('data', 'fsdp'))"
        assert eight[f"rows_ok{c}"] and eight[f"x_ok{c}"]
    ys = eight["ys"]  # epoch 0 reads 112 distinct examples of the 120, in a shuffled order
    epoch0 = np.concatenate([ys[0].ravel(), ys[1].ravel(), ys[2][:1].ravel()])
    assert len(set(epoch0.tolist())) == 112 and not np.array_equal(epoch0, np.sort(epoch0))
    np.testing.assert_array_equal(eight["stream/class_il"], eight["device/class_il"])
    np.testing.assert_allclose(eight["stream/params"], eight["device/params"], rtol=0, atol=1e-6)
