"""How a run's training batches reach its step, chosen once when the run is built.

Two feeds, one interface: the on-device path (each phase's examples placed on the devices
once, batches gathered in-jit by the epoch's permutation; with `data.draws_per_run` each
run's own images) and the grain streaming path (`data.pipeline = "stream"`,
`sequax.engine.stream`: chunks of batches read on the host, prefetched to the devices).

    feed = make_feed(experiment)
    test = feed.test_sets()                              # every task's test set, on device
    phase = feed.start_phase(p, tasks, state, programs, resume=None)
    compiled = feed.compile(state, phase, programs)     # once per run (a resumed run: again)
    state, means = phase.run(state, epoch, start, stop)  # steps [start, stop) of an epoch
    phase.data                                           # the phase's TaskData (start/end task)
"""

from __future__ import annotations

import numpy as np

from sequax.core.task_data import TaskData, task_arrays
from sequax.engine import sharding
from sequax.engine.evaluation import stack_run_test_sets, stack_test_sets
from sequax.engine.placement import DeviceImages
from sequax.engine.step import steps_per_epoch


def phase_images(scenario, drawn, tasks):
    """(x, y, task ids) of a phase; x is [runs, n, ...] when each run drew its own transform."""
    if drawn is None:
        parts = [scenario.train(t) for t in tasks]
    else:  # labels and examples are shared; only the images differ per run
        parts = [
            (
                np.stack([d.train(t)[0] for d in drawn]),
                scenario.source.train_y[scenario.train_indices[t]],
            )
            for t in tasks
        ]
    x = np.concatenate([xt for xt, _ in parts], axis=0 if drawn is None else 1)
    y = np.concatenate([yt for _, yt in parts])
    task_ids = np.concatenate([np.full(len(yt), t, np.int32) for t, (_, yt) in zip(tasks, parts)])
    return x, y, task_ids


def first_examples(scenario, tasks, count: int):
    """(x, y) of a phase's first `count` examples, transformed on the host (the state's
    shapes and init batch), without transforming the rest."""
    xs, ys = [], []
    for t in tasks:
        index = scenario.train_indices[t][: count - sum(map(len, ys))]
        xs.append(scenario.transform(t, scenario.source.train_x[index]))
        ys.append(scenario.source.train_y[index])
        if sum(map(len, ys)) >= count:
            break
    return np.concatenate(xs), np.concatenate(ys)


class Feed:
    """The run's feed: places phases and test sets, and trains a phase chunk by chunk."""

    def __init__(self, experiment):
        exp = self.experiment = experiment
        self.mesh, self.drawn = exp.mesh, exp.drawn
        # data.pipeline="stream": a grain pipeline feeds one run (None: the on-device path).
        # grain (and orbax beneath it) is imported only then: a third of a second at startup.
        self.stream, self.open_streams = None, []
        if exp.config.data.get("pipeline", "device") != "device":
            from sequax.engine import stream as stream_lib

            self.stream = stream_lib.make_feed(
                exp.config,
                exp.mesh,
                exp.batch_size,
                exp.capacity,
                runs=exp.grid.size > 1 or exp.drawn is not None,
                ordered=exp.scenario.ordered,
            )
        self.compiled = None
        self._first = None
        # A task-free stream hides the boundaries from the method: every batch's task is -1.
        self.task_free = bool(exp.config.training.get("task_free", False))
        # Raw images on the devices once, each task cut and transformed there (None: the
        # grain stream or a transform only the host can apply; engine.placement).
        self.images = DeviceImages.maybe(exp, streaming=self.stream is not None)

    @property
    def per_run_images(self) -> bool:
        return self.drawn is not None

    def example_batch(self) -> dict:
        """The first phase's first batch (the state's shapes), as host arrays: numpy, not
        jax.numpy, so that no eager op compiles a program of its own."""
        exp = self.experiment
        if self.images is not None:  # the first batch only, transformed on the host
            x, y = first_examples(exp.scenario if self.drawn is None else self.drawn[0],
                                  exp.phases[0], exp.batch_size)  # fmt: skip
        else:
            self._first = phase_images(exp.scenario, self.drawn, exp.phases[0])
            x, y, _ = self._first
            x = x if self.drawn is None else x[0]
        return {
            "x": np.asarray(x[: exp.batch_size], np.float32) / np.float32(255.0),
            "y": np.asarray(y[: exp.batch_size], np.int32),
            "task": np.zeros((exp.batch_size,), np.int32),
        }

    def test_sets(self):
        if self.images is not None:
            return self.images.test_sets()
        if self.drawn is None:
            return stack_test_sets(self.experiment.scenario, put=self._replicated)
        return stack_run_test_sets(self.drawn, put=self._replicated)

    def validation_sets(self):
        """The held-out validation split's sets (`data.validation`), like `test_sets`; None
        without one. Stacked on the host: a fraction of the training data, placed once."""
        validation = self.experiment.scenario.validation
        if validation is None:
            return None
        return stack_test_sets(validation, put=self._replicated)

    def _replicated(self, array):
        """A host array on every device of the mesh (test and validation sets)."""
        return sharding.put(np.asarray(array), sharding.replicated(self.mesh))

    def start_phase(self, p: int, tasks, state, programs, resume=None) -> "Phase":
        """Places phase `p`'s examples on the devices (split over the mesh) and, streaming,
        starts reading its batches (`resume`: the stream's saved position, mid-phase)."""
        exp, mesh = self.experiment, self.mesh
        put = lambda a: sharding.put(a, sharding.examples_sharding(mesh, np.shape(a)))  # noqa: E731
        if self.images is not None:
            size = sum(len(exp.scenario.train_indices[t]) for t in tasks)
            data = self._hidden(self.images.phase(tasks, put), put)
            return Phase(self, programs, data, steps_per_epoch(size, exp.batch_size), None)
        x, y, task_ids = (
            self._first if p == 0 and self._first else phase_images(exp.scenario, self.drawn, tasks)
        )
        self._first = None  # keep no host copy of phase 0 once it is on device
        put_x = None
        if self.drawn is not None:
            put_x = lambda a: sharding.put(  # noqa: E731
                a, sharding.examples_sharding(mesh, np.shape(a), run_axis=True)
            )
        if self.task_free:
            task_ids = np.full_like(task_ids, -1)
        data = task_arrays(x, y, task_ids, exp.capacity, put=put, put_x=put_x)
        stream = None
        if self.stream is not None:  # the phase's batches come from grain; `data` serves end_task
            stream = self.stream.start_phase(x, y, task_ids, _one_run(state), p, resume=resume)
            self.open_streams.append(stream)
        return Phase(self, programs, data, steps_per_epoch(len(y), exp.batch_size), stream)

    def _hidden(self, data: TaskData, put) -> TaskData:
        """`data` with its task ids hidden (-1) on a task-free stream (the pixel maps, which
        need them, are applied already)."""
        if not self.task_free:
            return data
        return data._replace(task=put(np.full((self.experiment.capacity,), -1, np.int32)))

    def close(self) -> None:
        """Stops the grain reader of a phase a run left early (an error, Ctrl-C, SIGTERM): its
        worker processes and shared memory would otherwise outlive the run."""
        while self.open_streams:
            self.open_streams.pop().close()

    def compile(self, state, phase: "Phase", programs):
        """The run's train program, compiled ahead of time (a shape change raises, never
        retraces silently)."""
        if phase.stream is not None:
            import jax

            step = jax.vmap(programs.train_step, in_axes=(0, None))  # one run, shared batches
            self.compiled = phase.stream.compile(state, step, programs.state_sharding)
        else:
            order = programs.order(state.key, state.step, np.int32(0), phase.data.size,
                                   self.experiment.capacity)  # fmt: skip
            start, stop = np.int32(0), np.int32(1)
            self.compiled = programs.run_steps.lower(
                state, phase.data, order, start, stop
            ).compile()
        return self.compiled


class Phase:
    """One phase being trained: its examples on device and, streaming, its grain reader."""

    def __init__(self, feed: Feed, programs, data: TaskData, steps: int, stream):
        self.feed, self.programs, self.data, self.steps, self.stream = (
            feed,
            programs,
            data,
            steps,
            stream,
        )
        self._epoch, self._order = None, None

    def run(self, state, epoch: int, start: int, stop: int):
        """Trains steps [start, stop) of `epoch`: (state, metrics averaged over the steps)."""
        if self.stream is not None:  # the next chunk of batches, already on the devices
            return self.stream.run(state, stop - start)
        if epoch != self._epoch:  # keyed by the step the epoch started at, `start` steps ago
            capacity = self.feed.experiment.capacity
            self._order = self.programs.order(
                state.key, state.step, np.int32(start), self.data.size, capacity
            )
            self._epoch = epoch
        return self.feed.compiled(state, self.data, self._order, np.int32(start), np.int32(stop))

    def position(self):
        """The stream's position after the last chunk trained on (None on device)."""
        return self.stream.get_state() if self.stream is not None else None

    def close(self):
        if self.stream is not None:
            self.stream.close()
            if self.stream in self.feed.open_streams:
                self.feed.open_streams.remove(self.stream)


def _one_run(state):
    """The state of the single run a stream feeds (the run axis dropped), for its orders."""
    return state._replace(step=state.step[0], key=state.key[0])
