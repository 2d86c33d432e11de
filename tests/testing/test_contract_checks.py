"""`sequax.testing` on methods written here: a correct one passes, each broken one fails with a
one-line message naming the property it breaks."""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sequax
from sequax import testing
from sequax.testing.properties import (
    CHECKPOINT,
    DETERMINISTIC,
    JITS,
    NO_RETRACE,
    PROPERTIES,
    PROTOCOL,
    STABLE_UPDATE,
)


@dataclasses.dataclass(frozen=True)
class Anchored(sequax.Algorithm):
    """Fine-tuning pulled towards the weights the last finished task left, (lam/2)|θ − θ*|²
    (off until a task has finished), counting the examples and tasks it has seen."""

    lam: float = 0.5

    def init(self, params, model_state, example_batch, rng):
        return {
            "anchor": jax.tree.map(jnp.zeros_like, params),
            "tasks": jnp.zeros((), jnp.int32),
            "examples": jnp.zeros((), jnp.int32),
        }

    def penalty(self, params, state, batch, rng, model, outputs):
        squares = jax.tree.map(lambda p, a: jnp.sum((p - a) ** 2), params, state.algo["anchor"])
        distance = sum(jax.tree.leaves(squares))
        on = (state.algo["tasks"] > 0).astype(jnp.float32)
        return on * self.lam / 2 * distance, {"anchor_distance": distance}

    def update(self, algo, state, batch, aux, rng):
        return {**algo, "examples": algo["examples"] + batch["y"].shape[0]}

    def end_task(self, state, task_data, rng, model):
        return {**state.algo, "anchor": state.params, "tasks": state.algo["tasks"] + 1}


# ---- broken methods, one property each -------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class GrowsInUpdate(Anchored):
    """Appends every batch to a buffer: the state changes shape at each step."""

    def init(self, params, model_state, example_batch, rng):
        items = jnp.zeros((8, 784), jnp.float32)
        return {**super().init(params, model_state, example_batch, rng), "buffer": {"items": items}}

    def update(self, algo, state, batch, aux, rng):
        items = jnp.concatenate([algo["buffer"]["items"], batch["x"].reshape(8, -1)])
        return {**algo, "buffer": {"items": items}}


@dataclasses.dataclass(frozen=True)
class NumpyRandomInit(Anchored):
    """Draws a projection with numpy's global generator: a new draw whenever init is traced."""

    def init(self, params, model_state, example_batch, rng):
        projection = jnp.asarray(np.random.normal(size=(16,)), jnp.float32)
        return {**super().init(params, model_state, example_batch, rng), "projection": projection}


@dataclasses.dataclass(frozen=True)
class CountsCallsOnSelf(Anchored):
    """Scales its penalty by a counter kept on self, bumped each time the loss is traced."""

    calls: list = dataclasses.field(default_factory=list)

    def penalty(self, params, state, batch, rng, model, outputs):
        self.calls.append(None)
        value, metrics = super().penalty(params, state, batch, rng, model, outputs)
        return value * len(self.calls), metrics


@dataclasses.dataclass(frozen=True)
class CountsTasksInPython(Anchored):
    """Counts finished tasks on self and stores the Python count: the state's `tasks` becomes a
    weakly typed scalar after end_task, so the next task's programs trace again."""

    finished: list = dataclasses.field(default_factory=list)

    def end_task(self, state, task_data, rng, model):
        self.finished.append(None)
        return {**state.algo, "anchor": state.params, "tasks": len(self.finished)}


class NotAMethod:
    """Has a loss, but none of the other hooks."""

    def init(self, params, model_state, example_batch, rng):
        return {}

    def loss(self, params, state, batch, rng, model):
        return 0.0, {}


@flax.struct.dataclass
class TaggedState:
    tasks: jax.Array
    note: object = flax.struct.field(pytree_node=False)  # a Python object: not an array


@dataclasses.dataclass(frozen=True)
class PythonObjectInState(Anchored):
    """Carries a Python object in its state's structure: a checkpoint holds arrays only."""

    def init(self, params, model_state, example_batch, rng):
        return TaggedState(tasks=jnp.zeros((), jnp.int32), note=object())

    def penalty(self, params, state, batch, rng, model, outputs):
        return jnp.zeros(()), {}

    def update(self, algo, state, batch, aux, rng):
        return algo

    def end_task(self, state, task_data, rng, model):
        return state.algo.replace(tasks=state.algo.tasks + 1)


@dataclasses.dataclass(frozen=True)
class TypedKeyInState(Anchored):
    """Keeps a new-style typed PRNG key in its state, which orbax cannot write."""

    def init(self, params, model_state, example_batch, rng):
        key = jax.random.wrap_key_data(rng)
        return {**super().init(params, model_state, example_batch, rng), "key": key}


@dataclasses.dataclass(frozen=True)
class BranchesOnTheTask(Anchored):
    """Branches in Python on a traced value: end_task cannot be traced."""

    def end_task(self, state, task_data, rng, model):
        if state.task > 0:
            return state.algo
        return super().end_task(state, task_data, rng, model)


@dataclasses.dataclass(frozen=True)
class HoldsAnArray(Anchored):
    anchor: jax.Array = dataclasses.field(default_factory=lambda: jnp.zeros(3))


@dataclasses.dataclass(frozen=True)
class PredictsTwoClasses(Anchored):
    def predict(self, params, model_state, algo, x, task, model):
        return super().predict(params, model_state, algo, x, task, model)[:, :2]


@dataclasses.dataclass(frozen=True)
class LossWithoutMetrics(Anchored):
    def loss(self, params, state, batch, rng, model):
        value, aux = super().loss(params, state, batch, rng, model)
        return value, {"model_state": aux["model_state"]}


@dataclasses.dataclass(frozen=True)
class OldPredictSignature(Anchored):
    def predict(self, params, model_state, algo, x, model):  # no `task`
        return model.apply(params, model_state, x, train=False)[0]["logits"]


class TinyNet(nn.Module):
    """A user's own flax module: (x, train) -> {"logits", "features"}."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool):
        features = nn.relu(nn.Dense(8)(x.reshape(x.shape[0], -1)))
        return {"logits": nn.Dense(self.num_classes)(features), "features": features}


# ---- tests ----------------------------------------------------------------------------------
@functools.cache
def anchored() -> testing.Harness:
    return testing.Harness(Anchored())


def test_a_correct_method_passes_and_gets_a_report():
    report = testing.check_algorithm(Anchored(), model=TinyNet(), optimizer=optax.adam(1e-2))
    assert report.method == "Anchored"
    assert report.properties == PROPERTIES
    assert report.compiled == dict.fromkeys(testing.harness.PROGRAMS, 1)
    # step, task, key; 4 parameters; Adam's count and 2 x 4 moments; 4 anchors, 2 counters
    assert report.state_arrays == 3 + 4 + 9 + 6
    assert report.algo_bytes > 0 and report.state_bytes > report.algo_bytes
    assert str(report).startswith("Anchored holds the contract (8 properties)")


def test_the_synthetic_stream():
    stream = testing.synthetic_stream(num_classes=10)
    assert stream.sizes == (43, 29) and stream.capacity == 48
    for t, data in enumerate(stream.tasks):
        assert data.x.shape == (48, 28, 28, 1) and data.x.dtype == jnp.uint8
        assert int(data.size) == stream.sizes[t]
        labels = np.asarray(data.y[: stream.sizes[t]])
        assert set(labels) == {2 * t, 2 * t + 1}  # class-incremental: two new classes a task
        assert (np.asarray(data.task[: stream.sizes[t]]) == t).all()
    assert [stream.steps(t) for t in range(2)] == [5, 3]
    with pytest.raises(ValueError, match="num_classes >= 6"):
        testing.synthetic_stream(num_classes=4, sizes=(16, 16, 16))


@pytest.mark.parametrize(
    "check",
    [
        testing.check_protocol,
        testing.check_jits,
        testing.check_state_stable,
        testing.check_no_retrace,
        testing.check_deterministic,
        testing.check_checkpoint_round_trip,
    ],
)
def test_each_check_passes_on_a_correct_method(check):
    check(anchored())  # one harness: its programs compile once for every check


def test_the_anchor_is_what_the_method_trained():
    """The harness trains what the engine would: the anchor after task t is the parameters."""
    trial = anchored().trial
    for state in trial.states:
        equal = jax.tree.map(np.array_equal, state.params, state.algo["anchor"])
        assert all(jax.tree.leaves(equal))
    assert [int(s.algo["tasks"]) for s in trial.states] == [1, 2]
    stream = anchored().stream
    assert int(trial.states[-1].algo["examples"]) == 8 * (stream.steps(0) + stream.steps(1))


def broken(algorithm, prop: str, *fragments: str, check=testing.check_algorithm):
    with pytest.raises(testing.ContractError) as caught:
        check(algorithm)
    error = caught.value
    assert isinstance(error, AssertionError)
    assert error.property == prop, str(error)
    message = str(error)
    name = algorithm.name if isinstance(algorithm, testing.Harness) else type(algorithm).__name__
    assert message.startswith(f"{name} breaks '{prop}': "), message
    assert "\n" not in message and "0x" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_a_state_that_grows_in_update():
    harness = testing.Harness(GrowsInUpdate())  # shared by both checks: traced once
    broken(harness, STABLE_UPDATE, "algo.buffer.items changed shape (8, 784) -> (16, 784)")
    broken(harness, STABLE_UPDATE, check=testing.check_state_stable)


def test_numpy_randomness_in_init():
    broken(
        NumpyRandomInit(),
        DETERMINISTIC,
        "the init traces to a different program each time",
        "captured constant 0 differs in 16 of 16 elements",
    )


def test_a_counter_on_self_read_while_tracing():
    harness = testing.Harness(CountsCallsOnSelf())
    broken(harness, DETERMINISTIC, "the train step traces to a different program")
    broken(harness, DETERMINISTIC, check=testing.check_deterministic)


def test_a_python_counter_in_the_state_retraces():
    harness = testing.Harness(CountsTasksInPython())
    broken(
        harness,
        NO_RETRACE,
        "the train step was traced again for task 1",
        "state.algo.tasks (int32[]) became weakly typed",
    )
    broken(harness, NO_RETRACE, check=testing.check_no_retrace)


def test_an_object_missing_hooks():
    message = broken(NotAMethod(), PROTOCOL, "lacks the hook(s) wrap_model, optimizer, phases")
    assert "subclass sequax.Algorithm" in message
    broken(NotAMethod(), PROTOCOL, check=testing.check_jits)  # every check starts there


def test_a_python_object_in_the_state_does_not_survive_a_checkpoint():
    broken(
        PythonObjectInState(),
        CHECKPOINT,
        "the state restored after task 0 differs from the one saved: algo (TaggedState) "
        "changed its static fields",
    )


def test_a_typed_key_in_the_state_does_not_survive_a_checkpoint():
    broken(TypedKeyInState(), CHECKPOINT, "algo.key is a typed PRNG key array")


def test_a_hook_that_does_not_trace():
    broken(BranchesOnTheTask(), JITS, "end_task does not trace under jax.jit", "Tracer")


@pytest.mark.parametrize(
    "algorithm, fragment",
    [
        (HoldsAnArray(), "self.anchor holds an array (float32[3])"),
        (PredictsTwoClasses(), "not float logits of shape (8, 10)"),
        (LossWithoutMetrics(), "loss's aux lacks metrics"),
        (OldPredictSignature(), "predict does not take the arguments the engine gives it"),
    ],
    ids=lambda value: None if isinstance(value, str) else type(value).__name__,
)
def test_protocol_breaks(algorithm, fragment):
    broken(algorithm, PROTOCOL, fragment)
