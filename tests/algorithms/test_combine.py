"""`combine`: a base method plus regularisers, against the hand-written equivalent."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from batches import random_batch

from sequax import algorithms
from sequax.algorithms import ER, EWC, Naive, combine
from sequax.algorithms.quadratic_penalty import quadratic_penalty
from sequax.core.models import mlp
from sequax.core.state import create_state
from sequax.core.task_data import task_arrays
from sequax.engine.step import make_train_step


def batch_of(seed: int, size: int = 6):
    return random_batch(seed, size, 10)


@pytest.fixture(scope="module")
def setup():
    model = mlp(10, widths=(16,))
    er, ewc = ER(capacity=8, replay_batch=4), EWC(lam=3.0)
    both = combine(er, ewc)
    state = create_state(model, both, optax.sgd(0.1), batch_of(0), seed=0)
    # A filled buffer and a non-trivial EWC state (importance and anchor), by hand.
    key = jax.random.PRNGKey(1)
    algo = {
        "er": er.update(state.algo["er"], state, batch_of(1, 8), {}, key),
        "ewc": state.algo["ewc"]._replace(
            importance=jax.tree.map(lambda p: jnp.abs(p) + 0.5, state.params),
            anchor=jax.tree.map(lambda p: p * 0.9, state.params),
        ),
    }
    return model, er, ewc, both, state._replace(algo=algo)


def test_state_keeps_each_part_under_its_name(setup):
    _, er, ewc, both, state = setup
    assert set(state.algo) == {"er", "ewc"}
    chex.assert_trees_all_equal_structs(
        state.algo["er"], er.init(state.params, {}, batch_of(0), jax.random.PRNGKey(0))
    )


def test_loss_and_gradient_equal_er_loss_plus_ewc_penalty(setup):
    model, er, ewc, both, state = setup
    batch, rng = batch_of(2), jax.random.PRNGKey(3)

    def by_hand(params):
        er_loss, _ = er.loss(
            params, state._replace(algo=state.algo["er"]), batch, jax.random.fold_in(rng, 0), model
        )
        return er_loss + quadratic_penalty(params, state.algo["ewc"], 3.0)

    def combined(params):
        return both.loss(params, state, batch, rng, model)[0]

    np.testing.assert_allclose(
        float(combined(state.params)), float(by_hand(state.params)), rtol=1e-6
    )
    chex.assert_trees_all_close(
        jax.grad(combined)(state.params), jax.grad(by_hand)(state.params), rtol=1e-5
    )
    metrics = both.loss(state.params, state, batch, rng, model)[1]["metrics"]
    assert set(metrics) == {"er/ce", "ewc/penalty"}


def test_train_step_updates_each_part_like_the_part_alone(setup):
    model, er, ewc, both, state = setup
    step = jax.jit(make_train_step(model, both, optax.sgd(0.1)))
    new_state, _ = step(state, batch_of(4))
    assert int(new_state.algo["er"].buffer.num_seen) == int(state.algo["er"].buffer.num_seen) + 6
    chex.assert_trees_all_equal(
        new_state.algo["ewc"], state.algo["ewc"]
    )  # EWC changes only at end_task
    data = task_arrays(np.zeros((12, 4, 4, 1), np.uint8), np.arange(12) % 10, np.zeros(12), 12)
    after = jax.jit(lambda s: both.end_task(s, data, jax.random.PRNGKey(0), model))(new_state)
    alone = jax.jit(
        lambda s: ewc.end_task(s._replace(algo=s.algo["ewc"]), data, jax.random.PRNGKey(0), model)
    )(new_state)
    chex.assert_trees_all_close(after["ewc"], alone)


def test_make_builds_combinations_with_one_line_errors():
    both = algorithms.make("er+ewc", er=dict(capacity=20, replay_batch=5), ewc=dict(lam=2.0))
    assert [name for name, _ in both.parts] == ["er", "ewc"] and both.parts[1][1].lam == 2.0
    with pytest.raises(ValueError, match="under their method's name"):
        algorithms.make("er+ewc", lam=2.0)
    with pytest.raises(ValueError, match="'er' has no `penalty`"):
        algorithms.make("naive+er")
    assert isinstance(algorithms.make("naive+ewc").parts[0][1], Naive)


class _RegulariserWithHook:
    """A penalty-defining part that also defines a base-only hook: refused as a regulariser."""

    def penalty(self, params, state, batch, rng, model, outputs=None):
        return jnp.zeros(()), {}

    def wrap_model(self, model):
        return model


def test_a_regulariser_with_a_base_only_hook_is_refused():
    with pytest.raises(ValueError, match="'reg' defines `wrap_model`; only the base"):
        combine(Naive(), _RegulariserWithHook(), names=("naive", "reg"))


def test_hat_as_base_takes_its_hooks_and_gives_ewc_its_gated_network():
    """HAT + EWC: the combination trains HAT's gated network (wrap_model, start_task, the
    gradient compensation and clamp, the task-IL predict) with EWC's penalty added, and EWC's
    Fisher is taken through the task's gates (`task_model`), so the gated-off units of a
    task get no importance from it."""
    import tempfile

    from sequax.algorithms import HAT
    from sequax.algorithms.hat import EMBEDDINGS
    from sequax.engine import loop
    from tests.algorithms.small_streams import small_split_config

    both = algorithms.make("hat+ewc", hat=dict(num_tasks=3, s_max=400.0), ewc=dict(lam=1.0))
    hat = both.parts[0][1]
    assert isinstance(hat, HAT)
    # The run-shaping hooks are HAT's: its gated model, its optimizer chain (conditioning and
    # compensation in front, the embedding clamp after), its task-IL predict.
    model = both.wrap_model(mlp(10, widths=(8,)))
    params, _ = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 28, 28, 1)))
    assert EMBEDDINGS in params
    chain = both.optimizer(optax.sgd(0.1)).init(params)
    assert jax.tree.structure(chain) == jax.tree.structure(
        hat.optimizer(optax.sgd(0.1)).init(params)
    )
    assert len(chain) == 3
    config = small_split_config(
        "hat+ewc",
        hat=dict(num_tasks=3, s_max=400.0, c=0.75),
        ewc=dict(lam=1.0, online=True, gamma=0.0),
    )
    config.data.num_tasks = 3
    config.model.widths = (64,)
    config.training.epochs = 2
    with tempfile.TemporaryDirectory() as workdir:
        result = loop.run(config, workdir, verbose=False)
    task_il = result.task_il
    assert np.diag(task_il).min() > 0.8, task_il  # every task learned through the gates
    assert np.max(task_il[0, 0] - task_il[-1, 0]) < 0.02, task_il  # HAT's masks still hold task 0
    algo = result.state.algo
    assert np.asarray(algo["hat"].classes).sum(1).tolist() == [
        2,
        2,
        2,
    ]  # start_task ran on HAT's entry
    importance = np.asarray(
        algo["ewc"].importance["Dense_0"]["kernel"]
    )  # the last task's alone (gamma 0)
    gates = np.asarray(jax.nn.sigmoid(400.0 * result.state.params[EMBEDDINGS]["layer_0"][2]))
    assert importance.max() > 0
    # Units the last task's gates close get (numerically) no Fisher through the gated network.
    closed = gates < 1e-3
    assert closed.any() and importance[:, closed].max() < 1e-8 * importance.max()
