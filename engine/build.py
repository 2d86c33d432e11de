"""Builds a run's parts from its ml_collections config, validating before any compile.

    scenario = build_scenario(config.data)
    model = build_model(config.model, scenario.num_classes)
    tx = build_optimizer(config.optimizer)
    algorithm = build_algorithm(config.algorithm)

Every error here is a `ConfigError` with a one-line message naming the key and the fix.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import numpy as np
import optax

from sequax import algorithms
from sequax import data as sequax_data
from sequax.core.models import Model, from_linen, mlp
from sequax.core.models import resnet18 as core_resnet18
from sequax.core.vit import vit as core_vit
from sequax.data.augment import make_augment, with_augmentation
from sequax.data.factories import load_callable
from sequax.data.validation import hold_out
from sequax.engine import optimizers
from sequax.engine.errors import ConfigError


def _as_dict(section: Any) -> dict[str, Any]:
    return dict(section.to_dict() if hasattr(section, "to_dict") else section)


def build_scenario(data_config):
    """The task stream: a source (files under `root`), a scenario, optional subsampling."""
    cfg = _as_dict(data_config)
    if cfg["source"] == "torch":  # the user's torch Datasets from data.factory, read once
        from sequax.data.torch_source import load_torch_source

        source = load_torch_source(cfg.get("factory"), int(cfg.get("num_classes") or 0))
    elif ":" in str(cfg["source"]):  # the user's own: a factory returning an ImageSource
        factory = load_callable(cfg["source"], "data.source", ConfigError, "a source factory")
        source = _called(factory, "config.data.source", cfg["source"], "no arguments")
        if not isinstance(source, sequax_data.ImageSource):
            raise ConfigError(
                f"config.data.source={cfg['source']!r} returned a {type(source).__name__}, not "
                "an ImageSource; return sequax.data.ImageSource(train_x, train_y, test_x, "
                "test_y, num_classes, name)"
            )
    else:
        source = sequax_data.load_source(cfg["source"], cfg.get("root"))
    options = dict(cfg.get("options") or {})
    if ":" in str(cfg["scenario"]):  # the user's own: own(source, num_tasks, seed, **options)
        own = load_callable(cfg["scenario"], "data.scenario", ConfigError, "a scenario builder")
        scenario = _called(
            lambda: own(source, num_tasks=cfg["num_tasks"], seed=cfg.get("seed", 0), **options),
            "config.data.scenario", cfg["scenario"],
            "(source, num_tasks=, seed=, **config.data.options)",
        )  # fmt: skip
        if not isinstance(scenario, sequax_data.Scenario):
            raise ConfigError(
                f"config.data.scenario={cfg['scenario']!r} returned a {type(scenario).__name__}, "
                "not a Scenario; return one, e.g. sequax.data.make_scenario(...)"
            )
    else:
        try:
            scenario = sequax_data.make_scenario(
                cfg["scenario"], source, num_tasks=cfg["num_tasks"], seed=cfg.get("seed", 0),
                **options,
            )  # fmt: skip
        except TypeError as error:  # an option the scenario does not take
            raise ConfigError(f"config.data.options: {error}; see sequax.data.scenarios") from None
    if cfg.get("train_per_task") or cfg.get("test_per_task"):
        scenario = sequax_data.subsample(  # 0 means "keep every example"
            scenario,
            cfg.get("train_per_task") or None,
            cfg.get("test_per_task") or None,
            seed=cfg.get("seed", 0),
        )
    if cfg.get("validation"):  # held out of each task before any blurring mixes them
        scenario = hold_out(scenario, float(cfg["validation"]), seed=cfg.get("seed", 0))
    blurry = dict(cfg.get("blurry") or {})
    kind = blurry.pop("kind", "none")
    if kind != "none":  # segments mixing neighbouring tasks, read in the stream's order
        from sequax.data.blurry import blur

        scenario = blur(scenario, kind, seed=cfg.get("seed", 0), **blurry)
    return scenario


def draw_seed(data_seed: int, run_seed: int) -> int:
    """The seed of one run's own permutations/angles (`config.data.draws_per_run`): a
    `SeedSequence` of (data seed, run seed), so no two (data seed, run seed) pairs share one."""
    return int(np.random.SeedSequence([int(data_seed), int(run_seed)]).generate_state(1)[0])


def drawn_scenarios(data_config, scenario, run_seeds, vmapped: bool):
    """(scenario, drawn) as a run trains and evaluates: without `data.draws_per_run`,
    (scenario, None); with it, each run's own draws (`run_scenarios`): the list beside the
    shared scenario for vmapped runs, else the one run's draw in place of the scenario."""
    if not _as_dict(data_config).get("draws_per_run", False):
        return scenario, None
    drawn = run_scenarios(data_config, scenario, run_seeds)
    return (scenario, drawn) if vmapped else (drawn[0], None)


def run_scenarios(data_config, scenario, run_seeds) -> list:
    """The scenario as each run draws it (`config.data.draws_per_run`): the transform's
    permutations or angles from `draw_seed(data.seed, run seed)`; examples (and any
    subsample) stay those of `scenario`."""
    cfg = _as_dict(data_config)
    if scenario.setting != "domain":
        raise ConfigError(
            f"config.data.draws_per_run=True redraws each run's permutations or angles, but "
            f"{scenario.name}'s tasks are class subsets with none: set "
            "config.data.draws_per_run=False"
        )
    options = dict(cfg.get("options") or {})
    return [
        dataclasses.replace(
            sequax_data.make_scenario(
                cfg["scenario"],
                scenario.source,
                num_tasks=cfg["num_tasks"],
                seed=draw_seed(cfg.get("seed", 0), s),
                **options,
            ),
            train_indices=scenario.train_indices,
            test_indices=scenario.test_indices,
            train_sizes=scenario.train_sizes,
            test_sizes=scenario.test_sizes,
        )
        for s in run_seeds
    ]


def resnet18(num_classes: int, nf: int = 20, init_from: str = "flax") -> Model:
    """`sequax.core.models.resnet18`, the reduced ResNet-18 (nf=20) or mammoth's (nf=64).

    `init_from`: "flax" draws PyTorch's default initialisation with flax's initialisers;
    "torch" takes, for each key, the weights the torch zoo ResNet-18 draws from the same key
    through the bridge (`engine.torch_bridge.to_flax`; needs torch): the same network, the
    same initial weights as `config.model.name="torch"` with `reinit=True`, trained by flax.
    """
    if init_from not in ("flax", "torch"):
        raise ValueError(f"resnet18 init_from={init_from!r}; use 'flax' or 'torch'")
    model = core_resnet18(num_classes, nf)
    if init_from == "torch":  # torch is imported only for this option
        from sequax.engine.torch_bridge.to_flax import torch_initialised

        return torch_initialised(model, num_classes, nf)
    return model


def vit(
    num_classes: int,
    variant: str = "",
    weights: str = "",
    load_head: bool = False,
    trainable=None,
    width: int = 0,
    depth: int = 0,
    num_heads: int = 0,
    mlp_dim: int = 0,
    patch_size: int = 0,
    approximate_gelu: bool | None = None,
    mean=(),
    std=(),
    channels: int = 0,
    head_zeroinit: bool = True,
    resize: int = 0,
) -> Model:
    """A Vision Transformer (`sequax.core.vit`): a `variant` ("Ti/16", "S/16", "B/16") or its
    sizes (`width`, `depth`, `num_heads`, `mlp_dim`, `patch_size`; 0 keeps the variant's),
    and `trainable` (path patterns, or "head": a frozen backbone).

    `weights`: a pretrained checkpoint to start from (`sequax.engine.vit_weights`): a
    big_vision or vit_jax `.npz`, a timm `state_dict` (`.pth`, `.bin`) or `.safetensors`.
    Its head is loaded only with `load_head=True` (a continual-learning head is new).
    `approximate_gelu` None: the checkpoint's own (tanh for big_vision, erf for timm; tanh
    without weights). `mean`/`std` () keep (0.5,)/(0.5,): [0, 1] pixels to [-1, 1].
    `resize`: the side the images are resized to first (224: CIFAR into a 224 px ViT).
    """
    sizes = dict(width=width, depth=depth, num_heads=num_heads, mlp_dim=mlp_dim)
    kwargs = {k: v for k, v in {**sizes, "patch_size": patch_size}.items() if v}
    kwargs.update({k: tuple(v) for k, v in dict(mean=mean, std=std).items() if v})
    kwargs.update(channels=channels, head_zeroinit=head_zeroinit, resize=resize)
    if not variant and len(kwargs) < 8 and not weights:
        missing = [k for k in (*sizes, "patch_size") if k not in kwargs]
        raise ValueError(f"vit needs a variant ('S/16') or its sizes; missing {missing}")
    if weights:
        from sequax.engine.vit_weights import pretrained_vit

        return pretrained_vit(
            num_classes, weights, variant=variant or None, load_head=load_head,
            trainable=trainable, approximate_gelu=approximate_gelu, **kwargs,
        )  # fmt: skip
    if approximate_gelu is not None:
        kwargs["approximate_gelu"] = approximate_gelu
    return core_vit(num_classes, variant or None, trainable=trainable, **kwargs)


MODELS = {"mlp": mlp, "resnet18": resnet18, "vit": vit}


def _torch_model(cfg: dict[str, Any], num_classes: int) -> Model:
    """`name="torch"`: a torch `nn.Module` from `cfg["factory"]` through the JAX bridge
    (`sequax.engine.torch_bridge.config`); torch is imported only for this name."""
    from sequax.engine.torch_bridge.config import model_from_config

    return model_from_config(cfg, num_classes)


def _called(function, key: str, spec: str, arguments: str):
    """`function()`, a call of the user's own factory named by `key`: whatever it raises is one
    line naming the path and what it is called with (not blamed on another key)."""
    try:
        return function()
    except ConfigError:
        raise
    except Exception as error:  # noqa: BLE001 - the user's code: any failure is the config's
        first = next(iter(str(error).splitlines()), "")
        raise ConfigError(
            f"{key}={spec!r} failed when called with {arguments} ({type(error).__name__}: "
            f"{first}); fix the function or the path"
        ) from None


def build_model(model_config, num_classes: int, data_config=None) -> Model:
    """The backbone `config.model.name` built with the section's other keys: "mlp",
    "resnet18", "torch" (a torch module from `model.factory`, through the bridge), or a
    "package.module:attr" import path to the user's own factory, called with `num_classes`
    and the section's other keys, returning a `Model` or a flax linen module.

    With `data_config`, its `augment` names (e.g. ("crop", "flip")) run on every train-mode
    input, replayed examples included, and `normalize` = (mean, std) standardises every
    input (`sequax.data.augment.with_augmentation`).
    """
    cfg = _as_dict(model_config)
    name = cfg.pop("name", "mlp")
    if name not in MODELS and name != "torch" and ":" not in str(name):
        known = ", ".join(map(repr, [*MODELS, "torch"]))
        raise ConfigError(
            f"config.model.name={name!r} is unknown; known: {known}, or the import path of "
            f"your own, 'package.module:factory'"
        )
    data = _as_dict(data_config or {})
    try:
        if name == "torch":
            model = _torch_model(cfg, num_classes)
        elif name in MODELS:
            model = MODELS[name](num_classes, **cfg)
        else:
            factory = load_callable(name, "model.name", ConfigError, "a model factory")
            built = _called(
                lambda: factory(num_classes, **cfg), "config.model.name", name,
                "(num_classes, **config.model)",
            )  # fmt: skip
            model = as_model(built, num_classes)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:
        raise ConfigError(f"config.model: {error}") from None
    if not data.get("augment") and not data.get("normalize"):
        return model
    try:
        return with_augmentation(
            model, make_augment(data.get("augment") or ()), data.get("normalize") or None
        )
    except (TypeError, ValueError) as error:
        raise ConfigError(f"config.data: {error}") from None


def as_model(obj, num_classes: int) -> Model:
    """A `Model` or a flax linen module (`module(x, train) -> {"logits", "features"}`) as a
    `Model`; anything else is refused in one line."""
    if isinstance(obj, Model):
        return obj
    if isinstance(obj, nn.Module):
        return from_linen(obj, num_classes)
    raise ConfigError(
        f"the model {type(obj).__name__} is not a model: give a sequax Model or a flax linen "
        f"Module returning {{'logits', 'features'}} (a torch nn.Module goes through "
        f"sequax.engine.torch_bridge.from_torch(module, example_batch) first)"
    )


def build_optimizer(
    optimizer_config,
    *,
    validate: bool = True,
    steps_per_epoch: int | None = None,
    epochs_per_task: int | None = None,
) -> optax.GradientTransformation:
    """The optimizer of `config.optimizer` (`sequax.engine.optimizers.make_optimizer`): sgd,
    momentum, nesterov, adam, adamw, rmsprop, lion, adagrad or "package.module:factory", with
    its learning-rate schedule, as the torch.optim class of the same name.

    `weight_decay` adds `wd * θ` to the gradient before the step (torch.optim.SGD's
    `weight_decay`, the L2 term of mammoth's LwF and iCaRL), so it also feeds the momentum;
    adamw and lion decouple it. `clip_norm` > 0 first scales the gradient to global norm
    <= clip_norm with torch's `clip_grad_norm_` semantics (`sequax.core.clipping`); it
    follows any gradient surgery (`protocol.optimizer_for`). `steps_per_epoch` (the
    optimizer steps in one epoch) and `epochs_per_task` convert a schedule's epochs to
    steps; a constant learning rate needs neither. `validate=False` accepts traced `lr`,
    `momentum`, `weight_decay`, `b1`, `b2`, `eps` (a vmapped sweep rebinding them per run;
    `sequax.engine.runs` checks every grid point's concrete values first).
    """
    try:
        return optimizers.make_optimizer(
            optimizer_config,
            validate=validate,
            steps_per_epoch=steps_per_epoch,
            epochs_per_task=epochs_per_task,
        )
    except optimizers.OptimizerConfigError as error:
        raise ConfigError(str(error)) from None


def check_optimizer(optimizer_config, *, epochs_per_task: int | None = None) -> None:
    """Every check of `config.optimizer` that needs no data (`optimizers.check_optimizer`)."""
    try:
        optimizers.check_optimizer(optimizer_config, epochs_per_task=epochs_per_task)
    except optimizers.OptimizerConfigError as error:
        raise ConfigError(str(error)) from None


def build_algorithm(algorithm_config):
    cfg = _as_dict(algorithm_config)
    name = cfg.pop("name", None)
    try:
        return algorithms.make(name, **cfg)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"config.algorithm: {error}") from None
