"""Optimizers and learning-rate schedules from `config.optimizer`, against torch.optim and
torch.optim.lr_scheduler on the same problem, step for step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import torch

from sequax.configs.common import base_config
from sequax.core.clipping import clip_grad_norm_transform
from sequax.engine import optimizers, runs
from sequax.engine.build import ConfigError, build_optimizer, check_optimizer

STEPS = 25
RNG = np.random.default_rng(0)
X = RNG.normal(size=(16, 5)).astype(np.float32)
Y = RNG.normal(size=(16, 3)).astype(np.float32)
W0 = RNG.normal(size=(5, 3)).astype(np.float32)
B0 = RNG.normal(size=(3,)).astype(np.float32)


def loss(params):
    """A small least-squares problem with two parameter leaves."""
    return 0.5 * jnp.mean((X @ params["w"] + params["b"] - Y) ** 2)


def torch_loss(w, b):
    return 0.5 * ((torch.from_numpy(X) @ w + b - torch.from_numpy(Y)) ** 2).mean()


def params0():
    return {"w": jnp.asarray(W0), "b": jnp.asarray(B0)}


def run_jax(tx, steps=STEPS):
    params, grad, update = params0(), jax.jit(jax.grad(loss)), jax.jit(tx.update)
    state = tx.init(params)
    for _ in range(steps):
        updates, state = update(grad(params), state, params)
        params = optax.apply_updates(params, updates)
    return params


def run_torch(make, steps=STEPS, clip_norm=0.0, scheduler=None):
    w = torch.nn.Parameter(torch.from_numpy(W0.copy()))
    b = torch.nn.Parameter(torch.from_numpy(B0.copy()))
    opt = make([w, b])
    schedule = scheduler(opt) if scheduler else None
    for _ in range(steps):
        opt.zero_grad()
        torch_loss(w, b).backward()
        if clip_norm:
            torch.nn.utils.clip_grad_norm_([w, b], clip_norm)
        opt.step()
        if schedule:
            schedule.step()
    return {"w": w.detach().numpy(), "b": b.detach().numpy()}


def assert_close(params, reference, tolerance=1e-6):
    for key in ("w", "b"):
        np.testing.assert_allclose(params[key], reference[key], rtol=0, atol=tolerance)


# ---------------------------------------------------------------- each optimizer vs torch ---

T = torch.optim
CASES = {
    "sgd+L2": (
        dict(name="sgd", lr=0.1, weight_decay=1e-2),
        lambda p: T.SGD(p, lr=0.1, weight_decay=1e-2),
        0,
    ),
    "momentum+L2+clip": (
        dict(name="momentum", lr=0.1, momentum=0.9, weight_decay=1e-2, clip_norm=0.5),
        lambda p: T.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
        0.5,
    ),
    "nesterov": (
        dict(name="nesterov", lr=0.1, momentum=0.9),
        lambda p: T.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
        0,
    ),
    "sgd+nesterov": (
        dict(name="sgd", lr=0.1, momentum=0.8, nesterov=True, weight_decay=1e-3),
        lambda p: T.SGD(p, lr=0.1, momentum=0.8, nesterov=True, weight_decay=1e-3),
        0,
    ),
    "adam+L2": (
        dict(name="adam", lr=0.01, weight_decay=1e-2),
        lambda p: T.Adam(p, lr=0.01, weight_decay=1e-2),
        0,
    ),
    "adam b1 b2 eps": (
        dict(name="adam", lr=0.02, b1=0.8, b2=0.99, eps=1e-3),
        lambda p: T.Adam(p, lr=0.02, betas=(0.8, 0.99), eps=1e-3),
        0,
    ),
    "adamw": (
        dict(name="adamw", lr=0.01, weight_decay=0.1),
        lambda p: T.AdamW(p, lr=0.01, weight_decay=0.1),
        0,
    ),
    "rmsprop+momentum+L2": (
        dict(name="rmsprop", lr=0.01, momentum=0.5, weight_decay=1e-2, eps=1e-4),
        lambda p: T.RMSprop(p, lr=0.01, momentum=0.5, weight_decay=1e-2, eps=1e-4),
        0,
    ),
    "rmsprop centered": (
        dict(name="rmsprop", lr=0.01, b2=0.9, args=dict(centered=True)),
        lambda p: T.RMSprop(p, lr=0.01, alpha=0.9, centered=True),
        0,
    ),
    "adagrad+L2": (
        dict(name="adagrad", lr=0.1, weight_decay=1e-2),
        lambda p: T.Adagrad(p, lr=0.1, weight_decay=1e-2),
        0,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_optimizer_matches_torch(case):
    config, make, clip_norm = CASES[case]
    assert_close(run_jax(build_optimizer(config)), run_torch(make, clip_norm=clip_norm))


def test_lion_matches_its_formula():
    """Chen et al. 2023, Alg. 2 (torch 2.13 has no Lion): u = sign(β1 m + (1-β1) g),
    θ ← θ - lr (u + λ θ), m ← β2 m + (1-β2) g."""
    lr, b1, b2, wd = 0.01, 0.9, 0.99, 0.1
    tx = build_optimizer(dict(name="lion", lr=lr, weight_decay=wd))
    grad = jax.jit(jax.grad(loss))
    params = {k: np.asarray(v, np.float64) for k, v in params0().items()}
    momentum = {k: np.zeros_like(v) for k, v in params.items()}
    for _ in range(STEPS):
        g = {k: np.asarray(v, np.float64) for k, v in grad(params).items()}
        for k in params:
            u = np.sign(b1 * momentum[k] + (1 - b1) * g[k])
            params[k] = params[k] - lr * (u + wd * params[k])
            momentum[k] = b2 * momentum[k] + (1 - b2) * g[k]
    assert_close(run_jax(tx), params)


@pytest.mark.parametrize(
    "momentum, weight_decay, clip_norm",
    [(0.0, 0.0, 0.0), (0.9, 0.0, 0.0), (0.0, 5e-4, 0.0), (0.8, 1e-2, 1.0), (0.0, 0.0, 2.0)],
)
def test_sgd_is_todays_chain(momentum, weight_decay, clip_norm):
    """The SGD path builds the same optax calls in the same order as before (clip, L2, sgd;
    parts switched off left out), so its state and its computation are unchanged."""
    config = base_config().optimizer
    config.update(dict(momentum=momentum, weight_decay=weight_decay, clip_norm=clip_norm))
    parts = [optax.sgd(config.lr, momentum=momentum or None)]
    if weight_decay:
        parts.insert(0, optax.add_decayed_weights(weight_decay))
    if clip_norm:
        parts.insert(0, clip_grad_norm_transform(clip_norm))
    before = parts[0] if len(parts) == 1 else optax.chain(*parts)
    after = build_optimizer(config)
    params = params0()
    state = after.init(params)
    assert jax.tree.structure(state) == jax.tree.structure(before.init(params))
    grads = jax.grad(loss)(params)
    jaxpr = lambda tx: str(jax.make_jaxpr(tx.update)(grads, state, params))
    assert jaxpr(after) == jaxpr(before)


# ---------------------------------------------------------------- schedules vs torch -------

SPE = 4  # optimizer steps per epoch


def lrs_of(config, steps, steps_per_epoch=SPE, restart_every=0, epochs_per_task=None):
    """The learning rate of each step, read from the built SGD's updates (gradient 1)."""
    tx = build_optimizer(
        dict(name="sgd", **config), steps_per_epoch=steps_per_epoch, epochs_per_task=epochs_per_task
    )
    params = {"p": jnp.zeros(())}
    state, update, lrs = tx.init(params), jax.jit(tx.update), []
    for step in range(steps):
        if restart_every and step and step % restart_every == 0:
            state = optimizers.restart_schedule(state)
        updates, state = update({"p": jnp.ones(())}, state, params)
        lrs.append(-float(updates["p"]))
    return np.array(lrs)


def torch_lrs(scheduler, steps, lr=0.1):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(()))], lr=lr)
    schedule, lrs = scheduler(opt), []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    return np.array(lrs)


S = torch.optim.lr_scheduler
SCHEDULE_CASES = {
    "multistep": (
        dict(lr=0.1, schedule="multistep", milestones=(2, 3.5), gamma=0.5),
        lambda o: S.MultiStepLR(o, milestones=[8, 14], gamma=0.5),
    ),
    "cosine": (
        dict(lr=0.1, schedule="cosine", total_epochs=6, end_lr=0.01),
        lambda o: S.CosineAnnealingLR(o, T_max=24, eta_min=0.01),
    ),
    "cosine alpha": (
        dict(lr=0.1, schedule="cosine", total_epochs=6, alpha=0.2),
        lambda o: S.CosineAnnealingLR(o, T_max=24, eta_min=0.02),
    ),
    "warmup_cosine": (
        dict(
            lr=0.1,
            schedule="warmup_cosine",
            warmup_epochs=1.5,
            warmup_start_factor=0.1,
            total_epochs=6,
        ),
        lambda o: S.SequentialLR(
            o,
            [S.LinearLR(o, start_factor=0.1, total_iters=6), S.CosineAnnealingLR(o, T_max=18)],
            milestones=[6],
        ),
    ),
    "constant with warmup": (
        dict(lr=0.1, warmup_epochs=2, warmup_start_factor=0.25),
        lambda o: S.LinearLR(o, start_factor=0.25, total_iters=8),
    ),
}


@pytest.mark.parametrize("case", list(SCHEDULE_CASES))
def test_schedule_matches_torch(case):
    config, scheduler = SCHEDULE_CASES[case]
    np.testing.assert_allclose(lrs_of(config, 24), torch_lrs(scheduler, 24), rtol=0, atol=1e-6)


def test_adamw_with_warmup_cosine_matches_torch():
    config, scheduler = SCHEDULE_CASES["warmup_cosine"]
    tx = build_optimizer(dict(name="adamw", weight_decay=0.05, **config), steps_per_epoch=SPE)
    reference = run_torch(lambda p: T.AdamW(p, lr=0.1, weight_decay=0.05), 24, scheduler=scheduler)
    assert_close(run_jax(tx, 24), reference)


def test_per_task_schedule_restarts_and_a_continued_one_does_not():
    """per_task=True: each 12-step task replays the schedule (restart_schedule at its start;
    its length is the task's 3 epochs); per_task=False runs one schedule over both tasks."""
    cosine = lambda steps: torch_lrs(lambda o: S.CosineAnnealingLR(o, T_max=steps), steps)
    per_task = lrs_of(dict(lr=0.1, schedule="cosine"), 24, restart_every=12, epochs_per_task=3)
    np.testing.assert_allclose(per_task, np.tile(cosine(12), 2), rtol=0, atol=1e-6)
    continued = dict(lr=0.1, schedule="cosine", per_task=False, total_epochs=6)
    np.testing.assert_allclose(lrs_of(continued, 24), cosine(24), rtol=0, atol=1e-6)


def test_restart_keeps_everything_but_the_schedule_also_under_vmap():
    config = dict(
        name="adam", lr=0.01, weight_decay=1e-3, clip_norm=1.0, schedule="multistep"
    ) | dict(milestones=(1,))
    tx = build_optimizer(config, steps_per_epoch=2)
    params = params0()
    state = tx.init(params)
    for _ in range(3):
        _, state = tx.update(jax.grad(loss)(params), state, params)
    restarted = optimizers.restart_schedule(state)
    counts = lambda s, kind: [
        n.count
        for n in jax.tree.leaves(s, is_leaf=lambda n: isinstance(n, kind))
        if isinstance(n, kind)
    ]
    assert counts(state, optax.ScaleByScheduleState) == [3]
    assert counts(restarted, optax.ScaleByScheduleState) == [0]
    assert counts(restarted, optax.ScaleByAdamState) == [3]  # Adam's bias correction goes on
    same = lambda a, b: jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.all(x == y)), a, b))
    assert same(optimizers.restart_schedule(restarted), restarted)
    adam = lambda s: [
        n
        for n in jax.tree.leaves(s, is_leaf=lambda n: isinstance(n, optax.ScaleByAdamState))
        if isinstance(n, optax.ScaleByAdamState)
    ]
    assert same(adam(state), adam(restarted))
    batched = jax.tree.map(lambda x: jnp.stack([x, x]), state)
    for restart in (optimizers.restart_schedule, jax.jit(jax.vmap(optimizers.restart_schedule))):
        out = restart(batched)
        assert [c.tolist() for c in counts(out, optax.ScaleByScheduleState)] == [[0, 0]]
        assert [c.tolist() for c in counts(out, optax.ScaleByAdamState)] == [[3, 3]]
    assert optimizers.restart_schedule(build_optimizer(dict(name="sgd", lr=0.1)).init(params)) == (
        optax.EmptyState(),
        optax.EmptyState(),
    )


# ---------------------------------------------------------------- vmapped sweeps -----------


@pytest.mark.parametrize(
    "config, hparams",
    [
        (
            dict(name="adam", lr=0.01, schedule="warmup_cosine", warmup_epochs=1, total_epochs=5),
            dict(lr=[0.01, 0.05]),
        ),
        (
            dict(name="sgd", lr=0.1, momentum=0.5, weight_decay=1e-3, clip_norm=1.0),
            dict(lr=[0.1, 0.05], momentum=[0.9, 0.5], weight_decay=[1e-2, 0.0]),
        ),
        (
            dict(name="adamw", lr=0.01, weight_decay=0.1, b1=0.9, b2=0.999),
            dict(weight_decay=[0.1, 0.01], b1=[0.9, 0.8], b2=[0.999, 0.99]),
        ),
    ],
)
def test_vmapped_sweep_equals_separate_runs(config, hparams):
    """Each run reads its swept values as traced scalars (`runs.bind`), as in the loop; the
    separate runs use Python floats (equal up to float32 rounding: a few ulp)."""
    hparams = {k: jnp.asarray(v, jnp.float32) for k, v in hparams.items()}
    bound = lambda hp: runs.bind(None, config, hp, steps_per_epoch=SPE)[1]

    def step(params, state, hp):
        updates, state = bound(hp).update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    state = jax.vmap(lambda hp: bound(hp).init(params0()))(hparams)
    params = jax.tree.map(lambda x: jnp.stack([x, x]), params0())
    step = jax.jit(jax.vmap(step))
    for _ in range(20):
        params, state = step(params, state, hparams)
    for r in range(2):
        point = config | {k: float(v[r]) for k, v in hparams.items()}
        separate = run_jax(build_optimizer(point, steps_per_epoch=SPE), 20)
        assert_close({k: v[r] for k, v in params.items()}, separate)


def test_optimizer_state_survives_a_checkpoint_round_trip(tmp_path):
    """The state is a pytree of arrays (no Python objects): saved and restored by orbax,
    training goes on exactly as without the round trip."""
    config = dict(name="adagrad", lr=0.1, weight_decay=1e-3, clip_norm=1.0, schedule="cosine")
    tx = build_optimizer(config | dict(total_epochs=3), steps_per_epoch=SPE)
    params = params0()
    state = tx.init(params)
    for _ in range(3):
        _, state = tx.update(jax.grad(loss)(params), state, params)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(state))
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "state", state)
        checkpointer.wait_until_finished()
        restored = checkpointer.restore(tmp_path / "state", jax.eval_shape(lambda: state))
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    grads = jax.grad(loss)(params)
    np.testing.assert_array_equal(
        tx.update(grads, restored, params)[0]["w"], tx.update(grads, state, params)[0]["w"]
    )


# ---------------------------------------------------------------- own factories, errors ----


def own_sgd(learning_rate, momentum=None):
    return optax.sgd(learning_rate, momentum=momentum)


def not_an_optimizer(learning_rate):
    return "sgd"


def test_an_import_path_and_an_object():
    own = dict(name=f"{__name__}:own_sgd", lr=0.1, weight_decay=1e-2, args=dict(momentum=0.9))
    builtin = dict(name="momentum", lr=0.1, momentum=0.9, weight_decay=1e-2)
    assert_close(run_jax(build_optimizer(own)), run_jax(build_optimizer(builtin)))
    nesterov = dict(name="nesterov", lr=0.1, momentum=0.9)
    sgd = optax.sgd(0.1, momentum=0.9, nesterov=True)  # an object: used as it is
    assert_close(run_jax(build_optimizer(sgd)), run_jax(build_optimizer(nesterov)))
    clipped = build_optimizer(dict(name=sgd, clip_norm=0.5))  # clipping still chained in front
    assert_close(run_jax(clipped), run_jax(build_optimizer(nesterov | dict(clip_norm=0.5))))


def test_base_config_is_plain_sgd_and_the_keys_are_known():
    from sequax.engine import validate

    assert jax.tree.structure(build_optimizer(base_config().optimizer).init(params0())) == (
        jax.tree.structure(optax.sgd(0.03).init(params0()))
    )
    config = base_config()
    config.data.source = "mnist_packaged"
    config.optimizer.update(
        dict(name="adamw", lr=1e-3, weight_decay=0.05, b2=0.99, schedule="warmup_cosine")
    )
    config.optimizer.update(dict(warmup_epochs=0.5, args=dict(nesterov=True)))
    validate.check_config(config)  # new keys accepted, args free-form
    config.optimizer.warmup_epochs = 1.0  # as long as the task's 1 epoch
    with pytest.raises(ConfigError, match="must be shorter than the schedule"):
        validate.check_config(config)


@pytest.mark.parametrize(
    "config, fragment",
    [
        (dict(name="adamm"), r"name='adamm' is unknown; did you mean 'adam'\?; known: 'sgd'"),
        (dict(name="no_such_module_x:f"), "cannot import 'no_such_module_x'"),
        (dict(name="a:b:c"), "must name an optimizer"),
        (dict(name=f"{__name__}:missing"), "has no callable 'missing'"),
        (dict(name=f"{__name__}:not_an_optimizer"), "returned str, not an optax"),
        (dict(name=f"{__name__}:own_sgd", args=dict(nope=1)), "failed when called"),
        (dict(lr=0.0), r"lr=0.0 must be > 0"),
        (dict(lr=-1.0), r"lr=-1.0 must be > 0"),
        (dict(momentum=-0.5), "momentum=-0.5 must be >= 0"),
        (dict(weight_decay=-1.0), "weight_decay=-1.0 must be a number >= 0"),
        (dict(clip_norm=True), "clip_norm=True must be a number >= 0"),
        (dict(name="adam", b1=1.0), "b1=1.0 must be >= 0 and < 1"),
        (dict(name="adam", eps=-1.0), "eps=-1.0 must be a number >= 0"),
        (dict(name="adam", momentum=0.9), "momentum=0.9 does not apply to 'adam'"),
        (dict(name="sgd", b1=0.9), "b1=0.9 does not apply to 'sgd'"),
        (dict(name="momentum"), "momentum=0.0 must be > 0 for 'momentum'"),
        (dict(nesterov=True), "must be > 0 for nesterov=True"),
        (dict(name="adam", args=dict(nope=1)), "config.optimizer.args for 'adam': .*nope"),
        (dict(schedule="cosin"), r"schedule='cosin' is unknown; did you mean 'cosine'\?"),
        (dict(schedule="multistep"), "needs config.optimizer.milestones"),
        (dict(schedule="multistep", milestones=(3, 2)), "must be increasing epochs > 0"),
        (dict(schedule="multistep", milestones=(2,), gamma=0.0), "gamma=0.0 must be > 0"),
        (dict(schedule="warmup_cosine", total_epochs=2), "needs config.optimizer.warmup_epochs"),
        (dict(schedule="cosine", end_lr=0.1, alpha=0.1, total_epochs=2), "set one of them"),
        (
            dict(schedule="cosine", per_task=False, reset_each_task=False),
            "set config.optimizer.total_epochs",
        ),
        (
            dict(schedule="cosine", per_task=False, total_epochs=5, reset_each_task=True),
            "set config.optimizer.reset_each_task=False",
        ),
        (dict(name=optax.adam(0.01), weight_decay=0.1), "cannot apply to an optax object"),
    ],
)
def test_bad_configs_are_one_line_errors(config, fragment):
    config = dict(name="sgd", lr=0.1) | config
    with pytest.raises(ConfigError, match=fragment) as error:
        check_optimizer(config)
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match=fragment):  # the builder checks the same
        build_optimizer(config, steps_per_epoch=SPE, epochs_per_task=1)


def test_a_schedule_needs_the_loop_s_steps_per_epoch():
    config = dict(name="adam", lr=0.01, schedule="cosine", total_epochs=2)
    check_optimizer(config)  # the config is fine: only the loop knows the steps
    with pytest.raises(ConfigError, match="needs steps_per_epoch"):
        build_optimizer(config)
    with pytest.raises(ConfigError, match="restarted per task needs its length"):
        build_optimizer(config | dict(total_epochs=0), steps_per_epoch=SPE)
