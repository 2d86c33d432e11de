"""The stream suite: the streaming path's throughput against torch's DataLoader and against
the on-device path (the "Streaming path" section of docs/benchmarks.md).

    python -m benchmarks.stream                                # from the repository root
    python -m benchmarks.stream --tasks=2 --train_per_task=3000 --output=   # quick, prints only
    python -m benchmarks.stream --update_docs                  # + docs/benchmarks.md

The section goes into `--output` (bench's: runs/bench/benchmarks.md by default) and, with
`--update_docs`, into the repository's docs/benchmarks.md too.

Iterating only (no training), over one epoch of the MNIST training images:
  stream    the streaming path as the loop uses it: a grain pipeline reading chunks of K
            batches, in `workers` processes, turned into device arrays
            (`jax.make_array_from_process_local_data`) and prefetched by a thread; over a
            map-style torch-style Dataset read record by record, and over the same images
            as arrays (index-batch-then-gather);
  loader    `torch.utils.data.DataLoader(dataset, batch_size, shuffle=True, num_workers,
            drop_last=True)` over the same Dataset (host tensors; torch on one thread);
  gather    the on-device path: the task's images on the device, batches gathered by an
            in-jit permutation inside one `fori_loop` (each batch summed, so that the gather
            cannot be optimised away: an upper bound on the gather's cost).
Then end to end: training samples/s of Split MNIST (SMNIST-5) through each pipeline.

Each cell runs in its own process (`python -m benchmarks.stream --single=CELL --json_out=OUT`): the
DataLoader's forked workers never inherit a JAX runtime, and every cell starts cold. Each
iterating cell reads 3 epochs (the DataLoader with `persistent_workers`); samples/s is taken
over epochs 2 and 3, so worker start-up is excluded and shows in `first epoch s` instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from absl import app, flags, logging

from sequax.configs.common import DATA_ROOT
from sequax.launch import bench  # its flags too: --tasks, --train_per_task, --output, --single
from sequax.launch.common import define_update_docs, machine

FLAGS = flags.FLAGS
define_update_docs()  # bench's flag, listed in this program's --help too
REPO_ROOT = Path(__file__).resolve().parents[1]  # where `python -m benchmarks.stream` resolves
WORKERS = (0, 2)
BATCHES = (10, 128)
CHUNK_SAMPLES = 2560  # a chunk holds about this many samples (K = CHUNK_SAMPLES // batch)
EPOCHS = 3  # rates are taken over epochs 2 and 3: worker start-up and warm-up excluded


class MnistRecords:
    """A map-style Dataset as torch's DataLoader takes it: item i is (uint8 tensor [1, 28, 28],
    int label), torchvision's MNIST layout without the PIL round trip. torch is imported on
    first use, so grain's worker processes that unpickle this class pay for torch only there."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images = np.moveaxis(
            images, -1, 1
        ).copy()  # [N, 1, 28, 28], writable (torch.from_numpy)
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        import torch

        return torch.from_numpy(self.images[i]), int(self.labels[i])


def mnist_train(root: str):
    from sequax.data import load_source

    try:
        return load_source("mnist", root)
    except Exception:  # noqa: BLE001 - no MNIST files: the packaged subset still measures rates
        return load_source("mnist_packaged")


def cell_loader(dataset, batch: int, workers: int) -> dict:
    import torch

    torch.set_num_threads(1)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )
    t0 = time.perf_counter()
    ends, count = [], 0
    for _ in range(EPOCHS):
        for _, y in loader:
            count += len(y)
        ends.append(time.perf_counter())
    return rates(t0, ends, count)


def rates(t0: float, ends: list[float], count: int) -> dict:
    """samples/s over the epochs after the first (start-up and warm-up excluded); `first s`
    is the first epoch's time, start-up included."""
    per_epoch = count // len(ends)
    steady = ends[-1] - ends[0]
    return dict(
        samples=count,
        first_s=ends[0] - t0,
        seconds=steady,
        samples_per_s=per_epoch * (len(ends) - 1) / max(steady, 1e-9),
    )


def cell_stream(source, batch: int, workers: int) -> dict:
    import jax

    from sequax.data.pipelines import ShuffledOrder
    from sequax.engine import sharding
    from sequax.engine.stream import Feed

    chunk = max(1, CHUNK_SAMPLES // batch)
    feed = Feed(
        sharding.make_mesh(),
        batch,
        chunk,
        capacity=len(source),
        epochs=EPOCHS,
        order="shuffle",
        workers=workers,
        prefetch=2,
    )
    t0 = time.perf_counter()
    stream = feed.stream(source, ShuffledOrder(len(source), seed=(0,)))
    per_epoch = stream.num_chunks // EPOCHS
    ends, count = [], 0
    for c in range(stream.num_chunks):
        element = stream.next_chunk()
        jax.block_until_ready(element["batches"])
        count += element["count"] * batch
        if (c + 1) % per_epoch == 0:
            ends.append(time.perf_counter())
    stream.close()
    return {**rates(t0, ends, count), "chunk": chunk}


def cell_gather(images, labels, batch: int) -> dict:
    import jax
    import jax.numpy as jnp
    from jax import lax

    from sequax.core.task_data import gather_batch, task_arrays
    from sequax.engine.step import epoch_order, steps_per_epoch

    n = len(labels)
    data = task_arrays(images, labels, np.zeros(n, np.int32), n)
    steps = steps_per_epoch(n, batch)

    def make_epoch(gather: bool):
        @jax.jit
        def epoch(data, key):
            order = epoch_order(key, jnp.int32(0), data.size, n)

            def body(i, total):
                if not gather:  # the same loop without the gather: its per-step overhead
                    return total + i.astype(jnp.float32)
                x = gather_batch(data, lax.dynamic_slice(order, (i * batch,), (batch,)))["x"]
                return total + x.sum()

            return lax.fori_loop(0, steps, body, jnp.float32(0))

        return epoch

    def best(fn) -> float:
        times = []
        for r in range(3):
            t0 = time.perf_counter()
            fn(data, jax.random.fold_in(key, r)).block_until_ready()
            times.append(time.perf_counter() - t0)
        return min(times)

    key = jax.random.PRNGKey(0)
    with_gather, empty = make_epoch(True), make_epoch(False)
    t0 = time.perf_counter()
    with_gather(data, key).block_until_ready()  # compile and a first epoch
    first = time.perf_counter() - t0
    empty(data, key).block_until_ready()
    seconds, overhead = best(with_gather), best(empty)
    return dict(
        samples=steps * batch,
        seconds=seconds,
        samples_per_s=steps * batch / seconds,
        first_s=first,
        loop_s=overhead,
    )


def cell_train(pipeline: str, method: str, tasks: int, train_per_task: int) -> dict:
    import tempfile

    from sequax.engine import loop

    config = bench.make_config("smnist5", method, tasks, train_per_task)
    config.data.pipeline = pipeline
    with tempfile.TemporaryDirectory() as workdir:
        result = loop.run(config, workdir, verbose=False)
    t = result.timings
    return dict(
        samples=int(t["train_samples"]),
        seconds=t["train"],
        samples_per_s=t["train_samples_per_s"],
        wall=t["wall"],
        compile=t["compile"],
        acc=100.0 * float(np.nanmean(result.class_il[-1])),
        matrix=np.asarray(result.class_il).tolist(),
    )


def run_cell(spec: str, root: str, tasks: int, train_per_task: int) -> dict:
    """`kind,a,b[,c]`: loader,BATCH,WORKERS | stream,records|arrays,BATCH,WORKERS | gather,BATCH |
    train,device|stream,METHOD."""
    kind, *args = spec.split(",")
    if kind == "train":
        return cell_train(args[0], args[1], tasks, train_per_task)
    source = mnist_train(root)
    images, labels = np.asarray(source.train_x), np.asarray(source.train_y)
    if kind == "loader":
        return cell_loader(MnistRecords(images, labels), int(args[0]), int(args[1]))
    if kind == "gather":
        return cell_gather(images, labels, int(args[0]))
    from sequax.data.pipelines import ArraySource, as_source

    data = (
        as_source(MnistRecords(images, labels))
        if args[0] == "records"
        else ArraySource(images, labels, np.zeros(len(labels), np.int32))
    )
    return cell_stream(data, int(args[1]), int(args[2]))


def child(spec: str, folder: str, tasks: int, train_per_task: int) -> dict | None:
    out = os.path.join(folder, spec.replace(",", "_") + ".json")
    command = [
        sys.executable,
        "-m",
        "benchmarks.stream",
        f"--single={spec}",
        f"--json_out={out}",
        f"--tasks={tasks}",
        f"--train_per_task={train_per_task}",
    ]
    done = subprocess.run(
        command, check=False, capture_output=True, text=True, timeout=1800, cwd=REPO_ROOT
    )
    if done.returncode != 0:
        print(f"  FAILED ({done.returncode}):\n{done.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(Path(out).read_text())


def table(cells: dict) -> str:
    lines = [
        "| batch | workers | path | samples/s | × DataLoader | first epoch s | chunk K |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for batch in BATCHES:
        gather = cells.get(("gather", batch))
        for workers in WORKERS:
            loader = cells.get(("loader", batch, workers))
            rows = [
                ("torch DataLoader (per record)", loader),
                (
                    "stream, per record (torch Dataset)",
                    cells.get(("stream", "records", batch, workers)),
                ),
                (
                    "stream, index-batch-then-gather (arrays)",
                    cells.get(("stream", "arrays", batch, workers)),
                ),
            ]
            if workers == 0:
                rows.append(("on-device gather (in-jit)", gather))
            for name, c in rows:
                if c is None:
                    lines.append(f"| {batch} | {workers} | {name} | failed | | | |")
                    continue
                ratio = f"{c['samples_per_s'] / loader['samples_per_s']:.2f}×" if loader else ""
                lines.append(
                    f"| {batch} | {workers if 'gather (in-jit)' not in name else '–'} | {name} | "
                    f"{c['samples_per_s']:,.0f} | {ratio} | {c['first_s']:.2f} "
                    f"| {c.get('chunk', '–')} |"
                )
    return "\n".join(lines)


def train_table(cells: dict, methods) -> str:
    lines = [
        "| method | pipeline | train samples/s | × device | train s | compile s | wall s | acc % "
        "| same matrix |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for method in methods:
        device = cells.get(("train", "device", method))
        for pipeline in ("device", "stream"):
            c = cells.get(("train", pipeline, method))
            if c is None:
                lines.append(f"| {method} | {pipeline} | failed | | | | | | |")
                continue
            ratio = f"{c['samples_per_s'] / device['samples_per_s']:.2f}×" if device else ""
            same = (
                ""
                if pipeline == "device" or not device
                else ("yes" if c["matrix"] == device["matrix"] else "NO")
            )
            lines.append(
                f"| {method} | {pipeline} | {c['samples_per_s']:,.0f} | {ratio} "
                f"| {c['seconds']:.2f} | {c['compile']:.1f} | {c['wall']:.1f} | {c['acc']:.2f} "
                f"| {same} |"
            )
    return "\n".join(lines)


def suite(tasks: int, train_per_task: int, methods=("naive", "er")) -> tuple[dict, float]:
    """Runs every cell in its own process; returns ({key: result}, seconds)."""
    import tempfile

    start = time.perf_counter()
    specs = {}
    for batch in BATCHES:
        specs[("gather", batch)] = f"gather,{batch}"
        for workers in WORKERS:
            specs[("loader", batch, workers)] = f"loader,{batch},{workers}"
            for kind in ("records", "arrays"):
                specs[("stream", kind, batch, workers)] = f"stream,{kind},{batch},{workers}"
    for method in methods:
        for pipeline in ("device", "stream"):
            specs[("train", pipeline, method)] = f"train,{pipeline},{method}"
    cells = {}
    with tempfile.TemporaryDirectory() as folder:
        for key, spec in specs.items():
            t0 = time.perf_counter()
            print(f"stream suite {spec} ...", end=" ", flush=True)
            cells[key] = child(spec, folder, tasks, train_per_task)
            if cells[key]:
                print(
                    f"{cells[key]['samples_per_s']:,.0f} samples/s, "
                    f"{time.perf_counter() - t0:.0f}s",
                    flush=True,
                )
    return cells, time.perf_counter() - start


HOW_TO_READ = """\
### How to read this

- **samples/s** (iterating): training examples delivered per second over epochs 2 and 3 of
  the 60,000 MNIST training images (3 epochs read; the first, with process start-up and
  warm-up, is **first epoch s**). The stream's rows count examples that reached the devices
  as global arrays (`jax.block_until_ready` on each chunk); the DataLoader's, host tensors.
  **× DataLoader** divides by the DataLoader row of the same batch size and workers.
- **stream, per record** reads the same map-style Dataset as the DataLoader, item by item
  (`dataset[i]` returns a uint8 tensor [1, 28, 28] and an int), and stacks the tensors with
  one `torch.stack` per chunk, as the DataLoader's collate does per batch; **arrays** is the
  index-batch-then-gather path over the images as numpy arrays (`ArraySource`): one fancy
  index per chunk. A chunk is K batches (**chunk K**), the unit one dispatch trains on.
- **on-device gather** is the on-device path's batch gathering alone: the images on the
  device, an in-jit permutation, a `fori_loop` over the epoch's steps gathering each batch
  (and summing it, so the gather is not optimised away); the loop without the gather costs
  under 1 ms per epoch, so the row is the gather's own cost, paid inside every training step.
- **End to end**: `sequax.launch.bench`'s SMNIST-5 cell (MLP 784-100-100-10, SGD lr 0.03, batch
  10, one epoch per task; ER with a reservoir of 500) run by `engine.loop.run` with
  `config.data.pipeline` "device" or "stream" (`order="device"`, no workers, 2 chunks
  prefetched). **train samples/s** is the loop's own figure (time inside training
  dispatches, waiting for data included). **same matrix**: the accuracy matrices of the two
  pipelines are identical, as they must be for the same sample order.
- Worker processes are spawned (grain) or forked (DataLoader); on a 2-core machine two
  workers compete with the main process for the same cores.
"""


def section(
    cells: dict, header_lines: list[str], cores: int, load: float, methods=("naive", "er")
) -> str:
    """The markdown of the suite (between the `<!-- stream -->` markers of docs/benchmarks.md)."""
    lines = [
        "## Streaming path: grain against torch's DataLoader and the on-device path",
        "",
        "Each cell in its own process (`benchmarks/stream.py`).",
        *header_lines,
    ]
    if load > 0.5 * cores:
        lines.append(
            f"- **Taken under load** (load average {load:.2f} on {cores} cores at the start: other "
            "jobs were running): the numbers are indicative only; re-run the suite on an idle "
            "machine."
        )
    lines += [
        "",
        "### Iterating only (no training)",
        "",
        table(cells),
        "",
        "### End to end: SMNIST-5 training through each pipeline",
        "",
        train_table(cells, methods),
        "",
        HOW_TO_READ,
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    logging.set_verbosity(logging.WARNING)  # orbax's per-checkpoint INFO lines
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.single:  # one cell, in this process
        result = run_cell(FLAGS.single, DATA_ROOT, FLAGS.tasks, FLAGS.train_per_task)
        Path(FLAGS.json_out).write_text(json.dumps(result))
        return
    paths = bench.documents(FLAGS.output, FLAGS.update_docs, REPO_ROOT)  # before any cell
    info = machine()
    cells, seconds = suite(FLAGS.tasks, FLAGS.train_per_task)
    header = bench.header(info, seconds, "stream", program="benchmarks.stream")
    text = section(cells, header, info["cores"], info["load"][0])
    print("\n" + text.split("### How to read this")[0].rstrip())
    bench.publish("stream", text, paths)


if __name__ == "__main__":
    app.run(main)
