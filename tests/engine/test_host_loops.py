"""`engine.host_loops`: end-of-task programs whose loops over a convolutional network run from
the host on XLA:CPU.

What each test shows:
  * a program holding a scan over a convolution runs in pieces (the scan a host loop) and
    gives the one jitted program's values (carries, stacked outputs, reversed scans,
    equations before and after the loop);
  * a program without such a loop stays one compiled program;
  * EWC's Fisher on a small CNN, the engine's way (host loops, a vmap per chunk), matches
    the per-example gradients summed one by one;
  * the trace for the host loops tells `algorithms.fisher` to batch (`loops_on_host`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from sequax.core.models import from_linen
from sequax.core.task_data import loops_on_host, task_arrays
from sequax.engine.host_loops import HostLoops, _Pieces


def conv_scan(kernel, xs, scale, reverse=False):
    """A scan over chunks whose body convolves: carry the sum, stack each chunk's mean."""
    offset = jnp.sum(kernel) * 0.5  # an equation before the loop

    def body(carry, x):
        y = lax.conv_general_dilated(x, kernel, (1, 1), "SAME")
        return carry + jnp.sum(y**2) * scale + offset, jnp.mean(y, axis=(1, 2, 3))

    total, means = lax.scan(body, jnp.float32(0), xs, reverse=reverse)
    return {"total": total * 2.0, "means": means + 1.0}  # equations after it


@pytest.mark.parametrize("reverse", [False, True])
def test_a_convolutional_scan_runs_from_the_host_with_the_same_values(reverse):
    rng = np.random.default_rng(0)
    kernel = jnp.asarray(rng.normal(size=(2, 4, 3, 3)), jnp.float32)  # OIHW
    xs = jnp.asarray(rng.normal(size=(5, 2, 4, 6, 6)), jnp.float32)  # 5 chunks, NCHW
    scale = jnp.float32(0.3)

    def fn(k, x, s):
        return conv_scan(k, x, s, reverse)

    program = HostLoops(fn)
    lowered = program.lower(kernel, xs, scale)
    assert isinstance(lowered, _Pieces)  # on this CPU: pieces and a host loop
    got = lowered.compile()(kernel, xs, scale)
    want = jax.jit(fn)(kernel, xs, scale)
    np.testing.assert_allclose(got["total"], want["total"], rtol=1e-5)
    np.testing.assert_allclose(got["means"], want["means"], rtol=1e-5, atol=1e-6)
    assert got["means"].shape == (5, 2)
    np.testing.assert_allclose(program(kernel, xs, scale)["total"], want["total"], rtol=1e-5)


def test_a_program_without_a_convolutional_loop_stays_one_program():
    def fn(w, xs):
        return lax.scan(lambda c, x: (c + jnp.sum(x @ w), None), jnp.float32(0), xs)[0]

    w, xs = jnp.ones((3, 2)), jnp.ones((4, 5, 3))
    compiled = HostLoops(fn).lower(w, xs).compile()
    assert isinstance(compiled, jax.stages.Compiled)
    assert float(compiled(w, xs)) == pytest.approx(4 * 5 * 2 * 3)


class SmallCNN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(4, (3, 3))(x))
        x = x.mean(axis=(1, 2))
        return {"logits": nn.Dense(3)(x), "features": x}


def test_ewc_fisher_through_the_host_loops_matches_per_example_gradients():
    from sequax.algorithms.ewc import EWC

    model = from_linen(SmallCNN(), 3)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 255, size=(20, 6, 6, 1)).astype(np.uint8)
    y = rng.integers(0, 3, size=20).astype(np.int32)
    data = task_arrays(x, y, np.zeros(20, np.int32), 24)
    params, model_state = model.init(jax.random.key(0), jnp.zeros((1, 6, 6, 1)))
    ewc = EWC(lam=1.0, fisher_batch=8, fisher_labels="empirical")

    def fisher(params):
        return ewc.fisher(params, model_state, data, jax.random.key(1), model)

    program = HostLoops(fisher)
    assert isinstance(program.lower(params), _Pieces)
    got = program(params)

    def log_likelihood(p, i):
        logits = model.apply(p, model_state, jnp.asarray(x[i : i + 1]) / 255.0, train=False)[0]
        return jax.nn.log_softmax(logits["logits"])[0, y[i]]

    want = jax.tree.map(jnp.zeros_like, params)
    for i in range(20):
        g = jax.grad(log_likelihood)(params, i)
        want = jax.tree.map(lambda w, gi: w + gi**2 / 20, want, g)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-7)


def test_the_host_loop_trace_asks_for_batched_gradients():
    seen = []

    def fn(kernel, xs):
        seen.append(loops_on_host())
        return conv_scan(kernel, xs, jnp.float32(1.0))

    kernel, xs = jnp.ones((2, 3, 3, 3)), jnp.ones((2, 1, 3, 5, 5))
    HostLoops(fn).lower(kernel, xs)
    assert seen == [False, True]  # traced once to decide, once for the pieces
    assert loops_on_host() is False  # only while tracing
