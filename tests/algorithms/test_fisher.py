"""Per-example squared-gradient sums (`sequax.algorithms.fisher`): which path, and its value.

The dense path must be taken for networks of dense layers and refused, at trace time, for
every network it would get wrong: a parameter outside a dense layer, a layer called twice, a
kernel read outside its layer, a layer over more than one row per example, a model with no
linen module. Refused, the value is the `vmap(grad)` one; taken, it equals it.
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sequax.algorithms import EWC, fisher
from sequax.core.models import from_linen, mlp
from sequax.core.task_data import task_arrays

CLASSES = 10
SIZE, CAPACITY = 29, 32


class Scaled(nn.Module):
    """Dense layers and a learnable output temperature: a parameter outside any Dense."""

    @nn.compact
    def __call__(self, x, train):
        h = nn.relu(nn.Dense(16)(x.reshape(x.shape[0], -1)))
        logits = nn.Dense(CLASSES)(h) * self.param("temperature", nn.initializers.ones, ())
        return {"logits": logits, "features": h}


class Shared(nn.Module):
    """One Dense layer applied twice per forward (shared weights)."""

    @nn.compact
    def __call__(self, x, train):
        layer = nn.Dense(16)
        h = nn.relu(layer(nn.relu(layer(x.reshape(x.shape[0], -1)))))
        return {"logits": nn.Dense(CLASSES)(h), "features": h}


class Tied(nn.Module):
    """A kernel also read outside its layer (tied weights)."""

    @nn.compact
    def __call__(self, x, train):
        encoder = nn.Dense(16)
        h = nn.relu(encoder(x.reshape(x.shape[0], -1)))
        h = h + h @ encoder.variables["params"]["kernel"]  # [16, 16]: 4x4 images
        return {"logits": nn.Dense(CLASSES)(h), "features": h}


class Rows(nn.Module):
    """A Dense layer over each image row: its kernel's gradient is a sum of outer products."""

    @nn.compact
    def __call__(self, x, train):
        h = nn.relu(nn.Dense(8)(x.reshape(x.shape[0], 4, 4))).reshape(x.shape[0], -1)
        return {"logits": nn.Dense(CLASSES)(h), "features": h}


UNCOVERED = {
    "no_linen_module": lambda: mlp(CLASSES, widths=(16,))._replace(module=None),
    "parameter_outside_dense": lambda: from_linen(Scaled(), CLASSES),
    "layer_called_twice": lambda: from_linen(Shared(), CLASSES),
    "kernel_read_outside_its_layer": lambda: from_linen(Tied(), CLASSES),
    "several_rows_per_example": lambda: from_linen(Rows(), CLASSES),
}


@pytest.fixture(scope="module")
def task_data():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (SIZE, 4, 4, 1), dtype=np.uint8)
    return task_arrays(x, rng.integers(0, CLASSES, SIZE), np.zeros(SIZE), CAPACITY)


def init(model, seed=0):
    params, model_state = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 4, 4, 1)))
    return jax.tree.map(lambda p: 2.0 * p + 0.05, params), model_state  # confident, varied


def paths_taken(monkeypatch):
    """Records which path `squared_gradient_sum` takes ("dense" or "per_example")."""
    taken = []
    for name, function in (
        ("dense", fisher.dense_squared_gradient_sum),
        ("per_example", fisher.per_example_squared_gradient_sum),
    ):

        def spy(*args, name=name, function=function):
            taken.append(name)
            return function(*args)

        monkeypatch.setattr(fisher, f"{name}_squared_gradient_sum", spy)
    return taken


def ewc_fisher(model, params, model_state, data):
    ewc = EWC(likelihood_weighted=True, fisher_batch=8)
    return jax.jit(lambda p: ewc.fisher(p, model_state, data, jax.random.PRNGKey(0), model))(params)


def test_dense_path_is_taken_for_a_network_of_dense_layers(task_data, monkeypatch):
    model = mlp(CLASSES, widths=(16, 8))
    params, model_state = init(model)
    x = jnp.zeros((8, 4, 4, 1))
    assert fisher.dense_layers(model, params, model_state, x) == {
        ("Dense_0",): 16,
        ("Dense_1",): 8,
        ("Dense_2",): 10,
    }
    taken = paths_taken(monkeypatch)
    ewc_fisher(model, params, model_state, task_data)
    assert taken == ["dense"]  # traced once, inside the scan over chunks


@pytest.mark.parametrize("name", sorted(UNCOVERED))
def test_per_example_path_is_taken_where_the_dense_path_would_be_wrong(
    name, task_data, monkeypatch
):
    model = UNCOVERED[name]()
    params, model_state = init(model)
    assert fisher.dense_layers(model, params, model_state, jnp.zeros((8, 4, 4, 1))) is None
    taken = paths_taken(monkeypatch)
    ewc_fisher(model, params, model_state, task_data)
    assert taken == ["per_example"]


def test_dense_path_forced_on_a_shared_layer_is_wrong(task_data):
    """Why the check exists: the outer-product identity fails for a layer used twice."""
    model = from_linen(Shared(), CLASSES)
    params, model_state = init(model)
    x = jnp.asarray(np.random.default_rng(1).random((8, 4, 4, 1)), jnp.float32)
    targets = {"y": jnp.arange(8), "valid": jnp.ones(8, bool)}

    def objective(outputs, targets):
        log_probs = jax.nn.log_softmax(outputs["logits"])
        return jnp.take_along_axis(log_probs, targets["y"][:, None], 1)[:, 0], targets[
            "valid"
        ].astype(jnp.float32)

    reference = fisher.per_example_squared_gradient_sum(
        model, params, model_state, x, objective, targets
    )
    layers = {("Dense_0",): 16, ("Dense_1",): CLASSES}
    forced = fisher.dense_squared_gradient_sum(
        model, params, model_state, x, objective, targets, layers
    )
    assert not np.allclose(forced["Dense_0"]["kernel"], reference["Dense_0"]["kernel"], rtol=1e-2)
    chex.assert_trees_all_close(
        fisher.squared_gradient_sum(model, params, model_state, x, objective, targets), reference
    )


def test_any_row_wise_objective(monkeypatch):
    """Not only log-likelihoods: e.g. the squared norm of the logits, weighted per example."""
    model = mlp(CLASSES, widths=(16,))
    params, model_state = init(model, seed=2)
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.random((12, 4, 4, 1)), jnp.float32)
    targets = jnp.asarray(rng.random(12), jnp.float32)

    def squared_norm(outputs, weights):
        return jnp.sum(outputs["logits"] ** 2, axis=1), weights

    taken = paths_taken(monkeypatch)
    value = fisher.squared_gradient_sum(model, params, model_state, x, squared_norm, targets)
    reference = fisher.per_example_squared_gradient_sum(
        model, params, model_state, x, squared_norm, targets
    )
    assert taken == ["dense", "per_example"]
    chex.assert_trees_all_close(value, reference, rtol=1e-6, atol=0)


class ConvNet(nn.Module):
    """A convolution over the images, then a dense head: the per-example path's case."""

    @nn.compact
    def __call__(self, x, train):
        h = nn.relu(nn.Conv(4, (3, 3))(x)).reshape(x.shape[0], -1)
        return {"logits": nn.Dense(CLASSES)(h), "features": h}


def test_vmapped_runs_of_a_conv_network_equal_runs_one_by_one(task_data):
    """Regression: EWC's end of task over vmapped seeds of a conv network, traced as
    `engine.loop` traces it (under `jax.set_mesh`, the runs sharing the task's images,
    `out_shardings` from the sharding rules), raised a bare NotImplementedError from JAX's
    convolution batching rule; each run must equal the same run alone."""
    import optax

    from sequax.core.state import create_state
    from sequax.engine import sharding

    model = from_linen(ConvNet(), CLASSES)
    ewc = EWC(likelihood_weighted=True, fisher_batch=8)
    example = {
        "x": jnp.zeros((8, 4, 4, 1)),
        "y": jnp.zeros(8, jnp.int32),
        "task": jnp.zeros(8, jnp.int32),
    }

    def init(seed):
        return create_state(model, ewc, optax.sgd(0.1), example, seed, {})

    def end_task(state, data, key):
        return ewc.end_task(state, data, key, model)

    seeds = np.array([0, 1], np.int32)
    keys = jax.random.split(jax.random.PRNGKey(3), 2)
    mesh = sharding.make_mesh()
    with jax.set_mesh(mesh):
        shapes = jax.eval_shape(jax.vmap(init), seeds)
        specs = sharding.state_specs(shapes, shapes.params, mesh, runs=True)
        states = jax.jit(jax.vmap(init))(seeds)
        vmapped = jax.jit(
            jax.vmap(end_task, (0, None, 0)), out_shardings=sharding.named(mesh, specs).algo
        )
        together = vmapped(states, task_data, keys)
    for r in range(len(seeds)):
        alone = jax.jit(end_task)(jax.jit(init)(seeds[r]), task_data, keys[r])
        assert float(jnp.max(alone.importance["Conv_0"]["kernel"])) > 0  # a Fisher, not zeros
        chex.assert_trees_all_close(
            jax.tree.map(lambda a, r=r: a[r], together), alone, rtol=1e-5, atol=1e-8
        )


def test_sequential_per_example_gradients_equal_one_vmap_on_a_conv_net():
    """`per_example_gradient_sum` example by example (a scan: XLA:CPU runs the grouped
    convolutions of a vmapped kernel gradient slowly) gives the one-vmap value; a convolution
    in the value's computation is what chooses it on CPU."""

    class Depthwise(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            x = nn.Conv(4, (3, 3), feature_group_count=1)(x)
            x = nn.Conv(4, (3, 3), feature_group_count=4)(x)  # depthwise
            return {"logits": nn.Dense(3)(x.reshape(x.shape[0], -1))}

    model = from_linen(Depthwise(), 3)
    x = jax.random.uniform(jax.random.key(1), (20, 6, 6, 1))
    params, state = model.init(jax.random.key(0), x[:2])

    def value(p, example):
        logits = model.apply(p, state, example[None], train=False)[0]["logits"]
        return jax.nn.log_softmax(logits)[0, 1], jnp.float32(1.0)

    whole = fisher.per_example_gradient_sum(value, params, x, jnp.square, sequential=False)
    grouped = fisher.per_example_gradient_sum(value, params, x, jnp.square, sequential=True)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9), grouped, whole
    )
    assert fisher._convolution_groups(value, params, x[0]) == [1, 4]  # plain, depthwise
    dense = mlp(3, widths=(8,))
    dense_params, dense_state = dense.init(jax.random.key(0), x[:2])
    assert not fisher._convolution_groups(
        lambda p, e: dense.apply(p, dense_state, e[None], train=False)[0]["logits"].sum(),
        dense_params, x[0],
    )  # fmt: skip
