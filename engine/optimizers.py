"""Optimizers and learning-rate schedules from `config.optimizer`, with torch.optim's semantics.

    tx = make_optimizer(config.optimizer, steps_per_epoch=600, epochs_per_task=1)
    opt_state = tx.init(params)                  # a pytree of arrays: checkpointed as it is
    opt_state = restart_schedule(opt_state)      # at a task's start, when per_task=True

`config.optimizer.name` is a registered name, a "package.module:factory" path to the user's
own factory (called as `factory(learning_rate=<float or schedule>, **args)`, returning an
`optax.GradientTransformation`), or, from Python, an optax transformation object (used as it
is: its own learning rate, clipping still chained in front). Each name matches the
`torch.optim` class in the table on the same gradients (tests/engine/test_optimizers.py):

    name      torch.optim                  keys read (defaults: the torch class's)
    sgd       SGD                          momentum (0: none), nesterov
    momentum  SGD(momentum>0)              momentum (> 0), nesterov
    nesterov  SGD(momentum>0, nesterov)    momentum (> 0); nesterov always True
    adam      Adam                         b1=0.9, b2=0.999, eps=1e-8 (outside the sqrt;
                                           bias corrections precise as torch's)
    adamw     AdamW                        b1, b2, eps as adam; weight_decay decoupled
    rmsprop   RMSprop                      b2=0.99 (torch's alpha), eps=1e-8 (outside the
                                           sqrt), momentum; args.centered
    lion      (Chen et al. 2023)           b1=0.9, b2=0.99; weight_decay decoupled
    adagrad   Adagrad                      eps=1e-10; args.initial_accumulator_value=0.0

Every name reads `lr` and `weight_decay`: torch's L2 term `wd * θ` added to the gradient
before the step (`optax.add_decayed_weights` in front), except adamw and lion, whose decay
is decoupled (θ ← θ - lr·wd·θ beside the step, torch.optim.AdamW and the Lion paper).
`clip_norm` > 0 clips the gradient first, as torch's `clip_grad_norm_` before
`optimizer.step()` (`sequax.core.clipping`). `args` passes any other keyword to the optax
constructor (e.g. `args.nesterov=True` for adam, `args.mu_dtype`). A key an optimizer does
not read must be left unset (b1/b2/eps: None, momentum: 0, nesterov: False).

Schedules (`schedule`), counted in optimizer steps; epochs become steps with the loop's
`steps_per_epoch` (rounded to the nearest step):

    constant       lr (a linear warmup first when warmup_epochs > 0)
    multistep      lr · gamma^(milestones passed), `milestones` in epochs (MultiStepLR)
    cosine         from lr to end_lr (or alpha · lr) over the schedule's length
                   (CosineAnnealingLR, held at the end afterwards)
    warmup_cosine  linear warmup over `warmup_epochs` from warmup_start_factor · lr to lr,
                   then cosine over the rest (SequentialLR of LinearLR and CosineAnnealingLR)

`per_task=True` restarts the schedule at every task (the loop calls `restart_schedule`; the
length is `total_epochs`, else the task's epochs); `per_task=False` continues it over the
whole stream, whose length `total_epochs` must then be given. `reset_each_task=True`
re-initialises the whole optimizer state at each task (the loop's own reset), so it cannot
be combined with a schedule continued across tasks.

Traced values: with `validate=False`, `lr`, `momentum`, `weight_decay`, `b1`, `b2` and `eps`
may be traced scalars (`SWEEPABLE_KEYS`, a vmapped sweep in `sequax.engine.runs.bind`); the
structure of the optimizer (and of its state) then depends only on Python values.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from sequax.core.clipping import clip_grad_norm_transform
from sequax.data.factories import load_callable

SWEEPABLE_KEYS = ("lr", "momentum", "weight_decay", "b1", "b2", "eps")
SCHEDULES = ("constant", "multistep", "cosine", "warmup_cosine")
Schedule = Callable[[jax.Array], jax.Array]


class OptimizerConfigError(ValueError):
    """A `config.optimizer` that cannot run; one line naming the key and the fix
    (`sequax.engine.build` raises it as its `ConfigError`)."""


# ---------------------------------------------------------------- transformations --------


class AdagradState(NamedTuple):
    """The running sum of squared gradients (torch.optim.Adagrad's `sum`)."""

    sum_of_squares: optax.Updates


def scale_by_adagrad(eps=1e-10, initial_accumulator_value=0.0) -> optax.GradientTransformation:
    """g / (sqrt(Σ g²) + eps), torch's Adagrad: eps outside the square root, the sum starting
    at `initial_accumulator_value` (optax.scale_by_rss puts eps inside and starts at 0.1)."""

    def init(params):
        return AdagradState(
            jax.tree.map(lambda p: jnp.full_like(p, initial_accumulator_value), params)
        )

    def update(updates, state, params=None):
        sums = jax.tree.map(lambda g, s: s + g * g, updates, state.sum_of_squares)
        updates = jax.tree.map(lambda g, s: g / (jnp.sqrt(s) + eps), updates, sums)
        return updates, AdagradState(sums)

    return optax.GradientTransformation(init, update)


def _bias_correction(decay, count) -> jax.Array:
    """1 - decay^count as -expm1(count · log(decay)), log taken in float64 for a Python
    float: in float32, 1 - 0.999^t cancels to about 1e-5 relative error for small t (optax's
    `bias_correction`), while torch computes it in float64."""
    log_decay = math.log(decay) if _is_number(decay) else jnp.log1p(decay - 1.0)
    return -jnp.expm1(count.astype(jnp.float32) * log_decay)


def scale_by_adam(b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, *, nesterov=False, mu_dtype=None):
    """`optax.scale_by_adam` (same state, same update) with the bias corrections of
    `_bias_correction`, so Adam and AdamW match torch.optim's within float32 rounding."""

    def init(params):
        mu = optax.tree.zeros_like(params, dtype=mu_dtype)
        return optax.ScaleByAdamState(jnp.zeros([], jnp.int32), mu, optax.tree.zeros_like(params))

    def update(updates, state, params=None):
        mu = optax.tree.update_moment(updates, state.mu, b1, 1)
        nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
        count = optax.safe_increment(state.count)
        correct = lambda tree, decay, n: jax.tree.map(
            lambda t: t / _bias_correction(decay, n).astype(t.dtype), tree
        )
        mu_hat = correct(mu, b1, count)
        if nesterov:  # optax's (Dozat 2016 without the extra b2 factor)
            mu_hat = jax.tree.map(
                lambda m, g: b1 * m + (1 - b1) * g,
                correct(mu, b1, optax.safe_increment(count)),
                correct(updates, b1, count),
            )
        nu_hat = correct(nu, b2, count)
        updates = jax.tree.map(lambda m, v: m / (jnp.sqrt(v + eps_root) + eps), mu_hat, nu_hat)
        mu, nu = optax.tree.cast(mu, mu_dtype), optax.tree.cast_like(nu, state.nu)
        return updates, optax.ScaleByAdamState(count, mu, nu)

    return optax.GradientTransformation(init, update)


def adam(learning_rate, b1=0.9, b2=0.999, eps=1e-8, **args):
    """torch.optim.Adam: optax.adam's chain on `scale_by_adam` (eps outside the sqrt)."""
    return optax.chain(
        scale_by_adam(b1, b2, eps, **args), optax.scale_by_learning_rate(learning_rate)
    )


def adamw(learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-2, mask=None, **args):
    """torch.optim.AdamW: θ ← θ - lr·wd·θ - lr·adam(g), optax.adamw's chain on `scale_by_adam`."""
    return optax.chain(
        scale_by_adam(b1, b2, eps, **args),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )


def adagrad(learning_rate, eps=1e-10, initial_accumulator_value=0.0):
    """torch.optim.Adagrad (lr_decay=0) as an optax optimizer."""
    return optax.chain(
        scale_by_adagrad(eps, initial_accumulator_value),
        optax.scale_by_learning_rate(learning_rate),
    )


def rmsprop(learning_rate, decay=0.99, eps=1e-8, momentum=None, centered=False, initial_scale=0.0):
    """torch.optim.RMSprop: eps outside the square root, and the momentum buffer traced before
    the learning rate is applied (optax.rmsprop scales by the learning rate first, which
    differs from torch once the learning rate follows a schedule)."""
    scale = optax.scale_by_stddev if centered else optax.scale_by_rms
    return optax.chain(
        scale(decay=decay, eps=eps, initial_scale=initial_scale, eps_in_sqrt=False),
        optax.trace(decay=momentum) if momentum is not None else optax.identity(),
        optax.scale_by_learning_rate(learning_rate),
    )


def _sgd(learning_rate, momentum=None, nesterov=False, **args):
    return optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov, **args)


@dataclasses.dataclass(frozen=True)
class _Optimizer:
    make: Callable[..., optax.GradientTransformation]  # make(learning_rate, **reads, **args)
    reads: dict[str, Any]  # the keys it reads besides lr and weight_decay, with their defaults
    decoupled_decay: bool = False  # weight_decay is the constructor's (else L2 in front)


_SGD_READS = dict(momentum=0.0, nesterov=False)
OPTIMIZERS = {
    "sgd": _Optimizer(_sgd, _SGD_READS),
    "momentum": _Optimizer(_sgd, _SGD_READS),
    "nesterov": _Optimizer(_sgd, dict(momentum=0.0, nesterov=True)),
    "adam": _Optimizer(adam, dict(b1=0.9, b2=0.999, eps=1e-8)),
    "adamw": _Optimizer(adamw, dict(b1=0.9, b2=0.999, eps=1e-8), decoupled_decay=True),
    "rmsprop": _Optimizer(rmsprop, dict(b2=0.99, eps=1e-8, momentum=0.0)),
    "lion": _Optimizer(optax.lion, dict(b1=0.9, b2=0.99), decoupled_decay=True),
    "adagrad": _Optimizer(adagrad, dict(eps=1e-10)),
}
_UNSET = dict(momentum=0.0, nesterov=False, b1=None, b2=None, eps=None)  # "not given"


# ---------------------------------------------------------------- schedules --------------


def linear_warmup(lr, start_factor: float, steps: int, then: Schedule) -> Schedule:
    """lr · (start_factor → 1) linearly over `steps`, then `then(count - steps)` (torch's
    SequentialLR of LinearLR(start_factor, total_iters=steps) and the next scheduler)."""

    def schedule(count):
        fraction = jnp.asarray(count, jnp.float32) / steps
        warm = lr * (start_factor + (1.0 - start_factor) * fraction)
        return jnp.where(count < steps, warm, then(count - steps))

    return schedule


def multistep_schedule(lr, gamma: float, boundaries: tuple[int, ...]) -> Schedule:
    """lr · gamma^(number of boundaries <= count), torch's MultiStepLR stepped per step."""
    bounds = jnp.asarray(boundaries, jnp.int32)
    return lambda count: lr * jnp.power(gamma, jnp.sum(count >= bounds).astype(jnp.float32))


def cosine_schedule(lr, end_lr, steps: int) -> Schedule:
    """end_lr + (lr - end_lr)(1 + cos(π t / steps)) / 2, torch's CosineAnnealingLR(T_max=steps,
    eta_min=end_lr), with t held at `steps` afterwards (torch's would rise again)."""

    def schedule(count):
        t = jnp.minimum(jnp.asarray(count, jnp.float32), steps)
        return end_lr + (lr - end_lr) * 0.5 * (1.0 + jnp.cos(math.pi * t / steps))

    return schedule


def _epochs_to_steps(epochs, steps_per_epoch: int) -> int:
    return int(round(float(epochs) * steps_per_epoch))


def _length_epochs(cfg: dict[str, Any], epochs_per_task: int | None):
    """The schedule's length in epochs: `total_epochs`, else (restarted per task) a task's."""
    if cfg.get("total_epochs", 0):
        return cfg["total_epochs"]
    if not cfg.get("per_task", True):
        raise OptimizerConfigError(
            f"config.optimizer.schedule={cfg.get('schedule')!r} continued across tasks "
            f"(per_task=False) needs its length: set config.optimizer.total_epochs (the epochs "
            f"of the whole stream, e.g. num_tasks x training.epochs)"
        )
    if epochs_per_task is None:
        raise OptimizerConfigError(
            f"config.optimizer.schedule={cfg.get('schedule')!r} restarted per task needs its "
            f"length: set config.optimizer.total_epochs, or pass epochs_per_task to the builder"
        )
    return epochs_per_task


def make_schedule(
    optimizer_config, *, steps_per_epoch: int | None = None, epochs_per_task: int | None = None
):
    """The learning rate of `config.optimizer` by step: `lr` itself (a number or a traced
    scalar) for a constant schedule without warmup, else a function of the step count.

    `steps_per_epoch` (the optimizer steps in one epoch) converts the epoch-based keys;
    `epochs_per_task` is the length of a schedule restarted per task when `total_epochs`
    is 0. Values are not validated here (`make_optimizer` and `check_optimizer` do).
    """
    cfg = _as_dict(optimizer_config)
    lr, name = cfg["lr"], cfg.get("schedule", "constant")
    warmup_epochs = cfg.get("warmup_epochs", 0.0) or 0.0
    if name == "constant" and not warmup_epochs:
        return lr
    if steps_per_epoch is None:
        raise OptimizerConfigError(
            f"config.optimizer.schedule={name!r} counts epochs: the optimizer needs "
            f"steps_per_epoch (the optimizer steps in one epoch, given by the loop)"
        )
    warmup = max(1, _epochs_to_steps(warmup_epochs, steps_per_epoch)) if warmup_epochs else 0
    if ":" in str(name):  # the user's own: factory(lr, steps_per_epoch, epochs_per_task)
        factory = load_callable(
            name, "optimizer.schedule", OptimizerConfigError, "a schedule factory"
        )
        main = factory(lr=lr, steps_per_epoch=steps_per_epoch, epochs_per_task=epochs_per_task)
    elif name == "multistep":
        boundaries = tuple(_epochs_to_steps(m, steps_per_epoch) for m in cfg["milestones"])
        main = multistep_schedule(lr, cfg.get("gamma", 0.1), boundaries)
    elif name in ("cosine", "warmup_cosine"):
        length = _epochs_to_steps(_length_epochs(cfg, epochs_per_task), steps_per_epoch)
        if length - warmup < 1:
            raise OptimizerConfigError(
                f"config.optimizer.warmup_epochs={warmup_epochs!r} leaves no step of the "
                f"{name!r} schedule ({length} steps in all); shorten the warmup"
            )
        alpha = cfg.get("alpha", 0.0) or 0.0
        end_lr = alpha * lr if alpha else (cfg.get("end_lr", 0.0) or 0.0)
        main = cosine_schedule(lr, end_lr, length - warmup)
    else:
        main = lambda count: lr * jnp.ones((), jnp.float32)
    if not warmup:
        return main
    return linear_warmup(lr, cfg.get("warmup_start_factor", 0.0), warmup, main)


def restart_schedule(opt_state: optax.OptState) -> optax.OptState:
    """`opt_state` with every learning-rate schedule back at step 0, all else kept.

    Call it when a task starts and `config.optimizer.per_task` is True (a task's schedule
    starts again; unlike `reset_each_task`, Adam's moments and step count, momentum buffers
    and any other state carry over). It resets the `count` of each `optax.ScaleByScheduleState`
    (what `optax.scale_by_learning_rate` keeps for a schedule, so also a user's factory built
    on optax), anywhere in the state: inside chains, gradient surgery, and on a vmapped state
    (the run axis is kept: zeros of the count's shape). A state without a schedule is returned
    unchanged. Pure jnp: jit it (with the state's shardings) or call it on concrete arrays.
    """
    is_schedule = lambda node: isinstance(node, optax.ScaleByScheduleState)
    return jax.tree.map(
        lambda node: node._replace(count=jnp.zeros_like(node.count)) if is_schedule(node) else node,
        opt_state,
        is_leaf=is_schedule,
    )


# ---------------------------------------------------------------- building ---------------


def make_optimizer(
    optimizer_config,
    *,
    validate: bool = True,
    steps_per_epoch: int | None = None,
    epochs_per_task: int | None = None,
) -> optax.GradientTransformation:
    """The optax optimizer of `config.optimizer` (a ConfigDict, a dict, or an optax object).

    The chain is clip (clip_norm > 0) -> L2 weight decay (weight_decay > 0, unless the
    optimizer decouples it) -> the optimizer with the learning rate or its schedule; a part
    switched off by a Python 0 is left out (plain SGD is `optax.sgd` alone, as always).
    `validate=False` accepts traced `SWEEPABLE_KEYS` (their grid points were checked first).
    """
    cfg = _config(optimizer_config)
    if validate:
        _check(cfg, epochs_per_task)
        if steps_per_epoch is not None and not (
            isinstance(steps_per_epoch, int) and steps_per_epoch >= 1
        ):
            raise OptimizerConfigError(f"steps_per_epoch={steps_per_epoch!r} must be an int >= 1")
    name = cfg.get("name", "sgd")
    if isinstance(name, optax.GradientTransformation):
        parts, decoupled = [name], True  # the object's own learning rate and decay
    else:
        learning_rate = make_schedule(
            cfg, steps_per_epoch=steps_per_epoch, epochs_per_task=epochs_per_task
        )
        tx, decoupled = _core(cfg, learning_rate)
        parts = [tx]
    weight_decay, clip_norm = cfg.get("weight_decay", 0.0), cfg.get("clip_norm", 0.0)
    if not decoupled and not _is_zero(weight_decay):
        parts.insert(0, optax.add_decayed_weights(weight_decay))
    if not _is_zero(clip_norm):
        parts.insert(0, clip_grad_norm_transform(clip_norm))  # torch: clip, then step
    return parts[0] if len(parts) == 1 else optax.chain(*parts)


def check_optimizer(optimizer_config, *, epochs_per_task: int | None = None) -> None:
    """Every check of `config.optimizer` that needs no data (before anything compiles): the
    name or import path, each value's range, the schedule's keys, and that the optimizer
    builds with its `args` (with the constant `lr`; the schedule is built by the loop)."""
    cfg = _config(optimizer_config)
    _check(cfg, epochs_per_task)
    if not isinstance(cfg.get("name", "sgd"), optax.GradientTransformation):
        _core(cfg, cfg["lr"])


def _core(cfg: dict[str, Any], learning_rate) -> tuple[optax.GradientTransformation, bool]:
    """(the optimizer of `cfg["name"]` at `learning_rate`, whether it decouples weight decay)."""
    name = cfg.get("name", "sgd")
    args = _as_dict(cfg.get("args") or {})
    if name not in OPTIMIZERS:  # "package.module:factory" (checked to be one by `_check`)
        factory = _factory(name)
        try:
            tx = factory(learning_rate=learning_rate, **args)
        except Exception as error:  # noqa: BLE001 - any failure of the user's factory
            first = str(error).splitlines()[0] if str(error) else ""
            raise OptimizerConfigError(
                f"config.optimizer.name={name!r} failed when called with learning_rate and "
                f"config.optimizer.args {sorted(args)} ({type(error).__name__}: {first})"
            ) from None
        if not isinstance(tx, optax.GradientTransformation):
            raise OptimizerConfigError(
                f"config.optimizer.name={name!r} returned {type(tx).__name__}, not an "
                f"optax.GradientTransformation"
            )
        return tx, False
    spec = OPTIMIZERS[name]
    hyper = {
        key: default if _unset(key, cfg.get(key, _UNSET[key])) else cfg[key]
        for key, default in spec.reads.items()
    }
    if "momentum" in hyper and _is_zero(hyper["momentum"]):
        hyper["momentum"] = None  # no trace in the optimizer state (plain SGD, as always)
    if name == "rmsprop":
        hyper["decay"] = hyper.pop("b2")
    if spec.decoupled_decay:
        hyper["weight_decay"] = cfg.get("weight_decay", 0.0)
    try:
        return spec.make(learning_rate, **hyper, **args), spec.decoupled_decay
    except TypeError as error:
        raise OptimizerConfigError(f"config.optimizer.args for {name!r}: {error}") from None


def _factory(name: str):
    return load_callable(
        name,
        "optimizer.name",
        OptimizerConfigError,
        f"an optimizer: one of {', '.join(OPTIMIZERS)}, or 'package.module:factory'",
    )


# ---------------------------------------------------------------- checks -----------------


def _check(cfg: dict[str, Any], epochs_per_task: int | None) -> None:
    name = cfg.get("name", "sgd")
    if isinstance(name, optax.GradientTransformation):
        for key, rule in (("weight_decay", 0.0), ("schedule", "constant"), ("warmup_epochs", 0)):
            if cfg.get(key, rule) != rule:
                raise OptimizerConfigError(
                    f"config.optimizer.{key}={cfg[key]!r} cannot apply to an optax object "
                    f"given as config.optimizer.name; build it into the object"
                )
        _check_number(cfg, "clip_norm", 0.0, "a number >= 0 (0 = no clipping)", low=0.0)
        return
    if not isinstance(name, str) or (name not in OPTIMIZERS and ":" not in name):
        close = difflib.get_close_matches(str(name), list(OPTIMIZERS), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise OptimizerConfigError(
            f"config.optimizer.name={name!r} is unknown{hint}; known: "
            f"{', '.join(map(repr, OPTIMIZERS))}, or 'package.module:factory' (your own)"
        )
    if name not in OPTIMIZERS:
        _factory(name)  # a one-line error for a malformed path or a failing import
    reads = OPTIMIZERS[name].reads if name in OPTIMIZERS else {}
    lr = cfg.get("lr")
    if not (_is_number(lr) and lr > 0):
        raise OptimizerConfigError(
            f"config.optimizer.lr={lr!r} must be > 0; set a positive learning rate, "
            f"e.g. --config.optimizer.lr=0.03"
        )
    _check_number(cfg, "momentum", 0.0, ">= 0 and < 1 (0: no momentum)", low=0.0, below=1.0)
    _check_number(cfg, "weight_decay", 0.0, "a number >= 0 (0: no weight decay)", low=0.0)
    _check_number(cfg, "clip_norm", 0.0, "a number >= 0 (0 = no clipping)", low=0.0)
    for key in ("b1", "b2"):
        _check_number(cfg, key, None, ">= 0 and < 1 (None: the optimizer's default)", 0.0, below=1)
    _check_number(cfg, "eps", None, "a number >= 0 (None: the optimizer's default)", low=0.0)
    if not isinstance(cfg.get("nesterov", False), bool):
        raise OptimizerConfigError(
            f"config.optimizer.nesterov={cfg['nesterov']!r} must be True or False"
        )
    for key, unset in _UNSET.items():
        if key not in reads and not _unset(key, cfg.get(key, unset)):
            known = ", ".join(reads) if reads else "none of them (pass its own in args)"
            raise OptimizerConfigError(
                f"config.optimizer.{key}={cfg[key]!r} does not apply to {name!r} (of momentum, "
                f"nesterov, b1, b2, eps it reads {known}); set it to {unset!r}"
            )
    momentum = cfg.get("momentum", 0.0)
    if (name in ("momentum", "nesterov") or cfg.get("nesterov")) and not momentum > 0:
        raise OptimizerConfigError(
            f"config.optimizer.momentum={momentum!r} must be > 0 for "
            f"{'nesterov=True' if cfg.get('nesterov') else repr(name)}, e.g. 0.9"
        )
    if not hasattr(cfg.get("args") or {}, "keys"):
        raise OptimizerConfigError(
            f"config.optimizer.args={cfg['args']!r} must be a section of keyword arguments"
        )
    _check_schedule(cfg, epochs_per_task)


def _check_schedule(cfg: dict[str, Any], epochs_per_task: int | None) -> None:
    name = cfg.get("schedule", "constant")
    if ":" in str(name):  # the user's own schedule factory: it must import
        load_callable(name, "optimizer.schedule", OptimizerConfigError, "a schedule factory")
    elif name not in SCHEDULES:
        close = difflib.get_close_matches(str(name), SCHEDULES, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise OptimizerConfigError(
            f"config.optimizer.schedule={name!r} is unknown{hint}; known: "
            f"{', '.join(map(repr, SCHEDULES))}"
        )
    _check_number(cfg, "gamma", 0.1, "> 0 (the factor at each milestone)", low=0.0, strict=True)
    _check_number(cfg, "warmup_epochs", 0.0, ">= 0 (epochs of linear warmup)", low=0.0)
    _check_number(cfg, "warmup_start_factor", 0.0, ">= 0 and <= 1", low=0.0, high=1.0)
    _check_number(cfg, "end_lr", 0.0, ">= 0 (the cosine's final learning rate)", low=0.0)
    _check_number(cfg, "alpha", 0.0, ">= 0 and <= 1 (end_lr as a fraction of lr)", 0.0, high=1.0)
    _check_number(cfg, "total_epochs", 0, ">= 0 (0: a task's epochs)", low=0.0)
    for key in ("per_task", "reset_each_task"):
        if not isinstance(cfg.get(key, False), bool):
            raise OptimizerConfigError(f"config.optimizer.{key}={cfg[key]!r} must be True or False")
    milestones = cfg.get("milestones", ())
    if not (
        isinstance(milestones, (tuple, list))
        and all(_is_number(m) and m > 0 for m in milestones)
        and list(milestones) == sorted(set(milestones))
    ):
        raise OptimizerConfigError(
            f"config.optimizer.milestones={milestones!r} must be increasing epochs > 0, "
            f"e.g. (30, 60)"
        )
    warmup = cfg.get("warmup_epochs", 0.0)
    if name == "multistep" and not milestones:
        raise OptimizerConfigError(
            "config.optimizer.schedule='multistep' needs config.optimizer.milestones (epochs "
            "at which lr is multiplied by gamma), e.g. (30, 60)"
        )
    if name == "multistep" and warmup:
        raise OptimizerConfigError(
            f"config.optimizer.warmup_epochs={warmup!r}: warmup applies to the constant and "
            f"cosine schedules, not 'multistep'; set warmup_epochs=0"
        )
    if name == "warmup_cosine" and not warmup > 0:
        raise OptimizerConfigError(
            "config.optimizer.schedule='warmup_cosine' needs config.optimizer.warmup_epochs > 0 "
            "(or use schedule='cosine')"
        )
    if cfg.get("end_lr", 0.0) and cfg.get("alpha", 0.0):
        raise OptimizerConfigError(
            f"config.optimizer.end_lr={cfg['end_lr']!r} and alpha={cfg['alpha']!r} both set the "
            f"cosine's final learning rate; set one of them to 0"
        )
    scheduled = name != "constant" or warmup
    if scheduled and not cfg.get("per_task", True) and cfg.get("reset_each_task", False):
        raise OptimizerConfigError(
            "config.optimizer.per_task=False continues the schedule across tasks, but "
            "reset_each_task=True re-initialises the optimizer (and its schedule) at each "
            "task; set config.optimizer.reset_each_task=False"
        )
    if name in ("cosine", "warmup_cosine"):
        known = not cfg.get("per_task", True) or cfg.get("total_epochs") or epochs_per_task
        length = _length_epochs(cfg, epochs_per_task) if known else None  # None: the loop's
        if length is not None and warmup >= length:
            raise OptimizerConfigError(
                f"config.optimizer.warmup_epochs={warmup!r} must be shorter than the schedule "
                f"({length} epochs)"
            )


def _check_number(cfg, key, default, rule, low=None, high=None, *, below=None, strict=False):
    value = cfg.get(key, default)
    if value is None and default is None:
        return
    ok = _is_number(value)
    ok = ok and (low is None or (value > low if strict else value >= low))
    ok = ok and (high is None or value <= high) and (below is None or value < below)
    if not ok:
        raise OptimizerConfigError(f"config.optimizer.{key}={value!r} must be {rule}")


# ---------------------------------------------------------------- helpers ----------------


def _as_dict(section: Any) -> dict[str, Any]:
    return dict(section.to_dict() if hasattr(section, "to_dict") else section)


def _config(optimizer_config) -> dict[str, Any]:
    if isinstance(optimizer_config, optax.GradientTransformation):
        return {"name": optimizer_config}
    return _as_dict(optimizer_config)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_zero(value) -> bool:
    """A Python 0 (or None): the part is left out. A traced value always keeps its part."""
    return value is None or (_is_number(value) and value == 0)


def _unset(key: str, value) -> bool:
    return (
        value is None
        or (key == "nesterov" and value is False)
        or (key == "momentum" and _is_zero(value))
    )
