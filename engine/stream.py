"""The device side of the streaming path (`config.data.pipeline = "stream"`).

A training phase's batches come from a grain pipeline (`sequax.data.pipelines`) instead of
the on-device gather: chunks of K batches are read on the host (in worker processes when
`config.data.stream.workers > 0`), become global arrays split over the mesh's batch axes
(`jax.make_array_from_process_local_data`: each process supplies only the rows of each
batch that its own devices hold), are moved to the devices by a background thread while
the previous chunk trains, and go through the same `train_step` as the on-device path
(`sequax.engine.step.make_run_stream`). With `config.data.stream.order = "device"` the host
reads the on-device path's own permutations (`epoch_order`), so both pipelines train on
the same batches and give the same results, bit for bit on CPU.

    feed = make_feed(config, mesh, batch_size, capacity)         # None with pipeline "device"
    stream = feed.start_phase(x, y, task_ids, state, phase=0)    # starts reading, prefetching
    stream = feed.stream(as_source(torch_dataset), ShuffledOrder(n, seed=(0,)))  # any source
    compiled = stream.compile(state, train_step, state_sharding)  # once per run
    state, means = stream.run(state, count)                      # the next chunk: count batches
    position = stream.get_state()       # {"phase", "start_step", "iterator"}; resume=position
    stream.close()

Prefetching is grain's `ThreadPrefetchIterDataset` over the step that makes the device
arrays: one thread keeps `config.data.stream.prefetch` chunks on the devices ahead of the
step. JAX dispatches a chunk's program asynchronously and the loop blocks only on its
metrics, so the next chunk's reading and host-to-device copy overlap the current chunk's
training. That thread stores the pipeline's state with each chunk, so `get_state()` is the
position after the last chunk *trained on*, not after the last one prefetched.

Each phase builds its own pipeline, so worker processes (`workers > 0`) are spawned per phase:
about 1-2 s each on 2 cores (they import grain and numpy and unpickle the source). Workers
pay off for record-bound sources (decoding, torch transforms), not for arrays.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grain
import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sequax.data.pipelines import ArraySource, ChunkPlan, FixedOrder, ShuffledOrder, chunk_dataset
from sequax.engine.build import ConfigError
from sequax.engine.distributed import to_numpy
from sequax.engine.sharding import BATCH_AXES
from sequax.engine.step import epoch_order, make_run_stream, steps_per_epoch

PIPELINES = ("device", "stream")
ORDERS = ("device", "shuffle")  # the on-device path's permutations | a seeded numpy shuffle
BATCH_KEYS = ("x", "y", "task")


def make_feed(
    config,
    mesh: jax.sharding.Mesh,
    batch_size: int,
    capacity: int,
    *,
    runs: bool = False,
    ordered: bool = False,
):
    """The run's `Feed` for `config.data.pipeline == "stream"`, None for "device".

    Validates the streaming options before anything compiles. `capacity` is the on-device
    path's padded phase size (its permutations depend on it); `runs` says the run is several
    vmapped runs or draws per-run data, which the stream does not feed.
    """
    data = config.data
    pipeline = data.get("pipeline", "device")
    if pipeline not in PIPELINES:
        raise ConfigError(
            f"config.data.pipeline={pipeline!r} is unknown; use one of "
            f"{', '.join(map(repr, PIPELINES))}"
        )
    if pipeline == "device":
        return None
    if runs:
        raise ConfigError(
            "config.data.pipeline='stream' feeds one run; set config.runs=1, leave config.sweep "
            "empty and config.data.draws_per_run=False, or use config.data.pipeline='device'"
        )
    options = dict(data.get("stream") or {})
    order, workers, prefetch = (
        options.get("order", "device"),
        int(options.get("workers", 0)),
        int(options.get("prefetch", 2)),
    )
    if order not in ORDERS:
        raise ConfigError(
            f"config.data.stream.order={order!r} is unknown; use one of "
            f"{', '.join(map(repr, ORDERS))}"
        )
    if workers < 0 or prefetch < 0:
        raise ConfigError(
            f"config.data.stream: workers={workers} and prefetch={prefetch} must be >= 0"
        )
    return Feed(
        mesh,
        batch_size,
        int(config.training.steps_per_dispatch),
        capacity,
        int(config.training.epochs),
        order=order,
        workers=workers,
        prefetch=prefetch,
        seed=int(config.seed),
        ordered=ordered,
    )


@dataclasses.dataclass(eq=False)
class Feed:
    """Everything a run's streams share: the mesh, the shapes, and the compiled program.

    Attributes:
      mesh: the run's mesh; every chunk is split over its batch axes (data x fsdp).
      batch_size: the global batch size B.
      chunk: batches per chunk K (config.training.steps_per_dispatch).
      capacity: the on-device path's padded phase size (for `order="device"`).
      epochs: epochs per phase.
      order: "device" (the on-device path's `epoch_order`) or "shuffle" (ShuffledOrder,
        seeded by (seed, phase)).
      workers: grain worker processes (0: read in the prefetch thread).
      prefetch: chunks kept ready on the devices (0: read and copy when asked).
      seed: the run's seed (order "shuffle").
      ordered: the scenario's examples are in the stream's order (`Scenario.ordered`): every
        epoch reads them in it, whatever `order` says.
    """

    mesh: jax.sharding.Mesh
    batch_size: int
    chunk: int
    capacity: int
    epochs: int
    order: str = "device"
    workers: int = 0
    prefetch: int = 2
    seed: int = 0
    ordered: bool = False
    compiled: Any = None

    def __post_init__(self):
        self.sharding = NamedSharding(self.mesh, P(None, BATCH_AXES))  # [K, B, ...]: B split
        self.shard = process_shard(self.sharding, self.batch_size)
        self._epoch_order = jax.jit(epoch_order, static_argnums=3)
        self.element_spec = None  # (shape, dtype) of one image, from the first phase

    def start_phase(self, x, y, task, state, phase: int, resume: dict | None = None) -> PhaseStream:
        """Starts streaming a phase's examples (host arrays); `resume` is a `get_state()`
        of the same phase, to continue from where it was saved."""
        source = ArraySource(np.asarray(x), np.asarray(y), np.asarray(task))
        steps = steps_per_epoch(len(source), self.batch_size)
        start_step = int(resume["start_step"]) if resume else int(to_numpy(state.step))
        if self.ordered:  # the scenario's own order (blurry segments, MNIST-360), every epoch
            order = FixedOrder(np.tile(np.arange(len(source)), (self.epochs, 1)))
        elif self.order == "device":  # epoch e starts at step start_step + e * steps, as on device
            key = state.key
            orders = [
                to_numpy(
                    self._epoch_order(
                        key, np.int32(start_step + e * steps), np.int32(len(source)), self.capacity
                    )
                )[: steps * self.batch_size]
                for e in range(self.epochs)
            ]
            order = FixedOrder(np.stack(orders))
        else:
            order = ShuffledOrder(len(source), seed=(self.seed, phase))
        return self.stream(source, order, phase, start_step, resume)

    def stream(
        self, source, order, phase: int = 0, start_step: int = 0, resume: dict | None = None
    ) -> PhaseStream:
        """Streams any source (`ArraySource`, `RecordSource`: a torch Dataset through
        `sequax.data.pipelines.as_source`) in `order`, `self.epochs` epochs of full batches."""
        self.element_spec = self.element_spec or source.element_spec
        if tuple(source.element_spec) != tuple(
            self.element_spec
        ):  # the program is compiled for one shape
            raise ValueError(
                f"this source's images are {source.element_spec}, the run's are "
                f"{self.element_spec}; every phase of a run must have images of one shape and dtype"
            )
        plan = ChunkPlan(
            order,
            batch_size=self.batch_size,
            steps=steps_per_epoch(len(source), self.batch_size),
            epochs=self.epochs,
            chunk=self.chunk,
            shard=self.shard,
        )
        return PhaseStream(self, source, plan, phase, start_step, resume)


class PhaseStream:
    """One phase's chunks, read by grain and prefetched to the devices (see the module doc)."""

    def __init__(
        self, feed: Feed, source, plan: ChunkPlan, phase: int, start_step: int, resume: dict | None
    ):
        self.feed, self.phase, self.start_step = feed, phase, start_step
        self.num_chunks = len(plan)
        if resume is not None and int(resume["phase"]) != phase:
            raise ValueError(
                f"a stream state of phase {resume['phase']} cannot resume phase {phase}"
            )
        ds = chunk_dataset(source, plan, workers=feed.workers)
        ds = ds.map(GlobalChunk(feed.sharding, feed.batch_size))
        if feed.prefetch:
            ds = grain.experimental.ThreadPrefetchIterDataset(
                ds, prefetch_buffer_size=feed.prefetch
            )
        self._iterator = iter(ds)
        if resume is not None:
            self._iterator.set_state(resume["iterator"])

    def compile(self, state, train_step, state_sharding):
        """The run's chunk program (`make_run_stream`), compiled ahead of time once per run."""
        feed = self.feed
        if feed.compiled is None:
            shape, dtype = feed.element_spec
            lead = (feed.chunk, feed.batch_size)
            chunk = {
                "x": jax.ShapeDtypeStruct((*lead, *shape), dtype, sharding=feed.sharding),
                "y": jax.ShapeDtypeStruct(lead, np.int32, sharding=feed.sharding),
                "task": jax.ShapeDtypeStruct(lead, np.int32, sharding=feed.sharding),
            }
            run = make_run_stream(
                train_step, shardings=(state_sharding, {k: feed.sharding for k in BATCH_KEYS})
            )
            feed.compiled = run.lower(state, chunk, np.int32(0)).compile()
        return feed.compiled

    def next_chunk(self) -> dict:
        """{"batches": {"x", "y", "task"} global arrays [K, B, ...], "count": real batches}."""
        return next(self._iterator)

    def run(self, state, count: int):
        """Trains on the next chunk, which must hold `count` batches: (state, mean metrics)."""
        element = self.next_chunk()
        if element["count"] != count:
            raise RuntimeError(
                f"the stream's next chunk holds {element['count']} batches, the loop expected "
                f"{count}: the stream and the loop disagree on the phase's schedule"
            )
        return self.feed.compiled(state, element["batches"], np.int32(count))

    def get_state(self) -> dict:
        """The position after the last chunk trained on, for a checkpoint (JSON-serialisable):
        the phase, the step the phase started at (it fixes `order="device"`) and grain's
        iterator state. Resume with `feed.start_phase(..., phase, resume=this)` and the same
        `config.data.stream.workers` (grain's state is tied to the number of workers)."""
        return {
            "phase": self.phase,
            "start_step": self.start_step,
            "iterator": self._iterator.get_state(),
        }

    def close(self) -> None:
        """Stops the prefetch thread and the worker processes."""
        self._iterator.close()


@dataclasses.dataclass(frozen=True, eq=False)
class GlobalChunk:
    """A host chunk (this process's rows) -> {"batches": global arrays [K, B, ...], "count"}."""

    sharding: NamedSharding
    batch_size: int

    def __call__(self, element: dict) -> dict:
        batches = {}
        for key in BATCH_KEYS:
            local = element[key]
            shape = (local.shape[0], self.batch_size, *local.shape[2:])
            batches[key] = jax.make_array_from_process_local_data(self.sharding, local, shape)
        return {"batches": batches, "count": element["count"]}


def process_shard(sharding: NamedSharding, batch_size: int) -> grain.sharding.ShardOptions:
    """grain's `ShardByJaxProcess`, checked against the mesh: process p must hold rows
    [p*b, (p+1)*b) of every batch (b = B / processes), the rows it reads.

    `jax.make_mesh` orders devices process by process, so this holds for the meshes
    `sharding.make_mesh` builds; a hand-made mesh that interleaves processes fails here.
    """
    shard = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    local = batch_size // shard.shard_count
    rows = set()
    for index in sharding.addressable_devices_indices_map((1, batch_size)).values():
        rows.update(range(*index[1].indices(batch_size)))
    expected = set(range(shard.shard_index * local, (shard.shard_index + 1) * local))
    if rows != expected:
        raise ConfigError(
            f"process {shard.shard_index}'s devices hold batch rows {sorted(rows)[:4]}..., not the "
            f"block [{min(expected)}, {max(expected) + 1}) it streams; build the mesh with "
            "sequax.engine.sharding.make_mesh"
        )
    return shard
