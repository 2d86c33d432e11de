"""`config.model.name = "torch"`: a torch module named by an importable factory, as a `Model`.

    config.model = ml_collections.ConfigDict(dict(
        name="torch",
        factory="sequax.engine.torch_bridge.zoo:small_cnn",  # "package.module:function"
        kwargs=dict(widths=(16, 32)),   # the factory's keyword arguments
        classifier="",                  # "" = the nn.Linear that runs last (see from_torch)
        reinit=False,                   # True: re-draw the weights from each run's seed
        input_layout="NHWC",            # how sequax's [B, H, W, C] batches reach torch
        input_shape=(28, 28, 1),        # one example's shape (the loop passes the stream's)
        seed=0,                         # torch's seed while the factory builds the module
    ))

`engine.build.build_model` calls `model_from_config` (imported only for this name, so runs
that use no torch model never import torch). Every problem is a one-line `ConfigError`.
"""

from __future__ import annotations

from typing import Any

from sequax.core.models import Model
from sequax.data.factories import load_callable
from sequax.engine.errors import ConfigError

KEYS = ("factory", "kwargs", "classifier", "reinit", "input_layout", "input_shape", "seed")


def load_factory(spec: Any):
    """The callable named by "package.module:function"."""
    return load_callable(
        spec,
        "model.factory",
        ConfigError,
        "an importable callable as 'package.module:function', e.g. "
        "'sequax.engine.torch_bridge.zoo:small_cnn'",
    )


def model_from_config(cfg: dict[str, Any], num_classes: int, input_shape=None) -> Model:
    """Builds the torch module with its factory and converts it (`from_torch`).

    `cfg` is `config.model` as a dict, without "name". `input_shape` (one example, NHWC),
    when given, overrides `cfg["input_shape"]`.
    """
    unknown = sorted(set(cfg) - set(KEYS))
    if unknown:
        raise ConfigError(
            f"config.model has unknown key(s) {unknown} for name='torch'; known: {', '.join(KEYS)}"
        )
    try:
        import torch

        from sequax.engine.torch_bridge.bridge import from_torch
        from sequax.engine.torch_bridge.tracing import TorchBridgeError
    except ImportError as error:
        raise ConfigError(
            f"config.model.name='torch' needs torch and torchax ({error}); install them "
            "as BUILD.md says"
        ) from None
    factory = load_factory(cfg.get("factory"))
    shape = tuple(input_shape if input_shape is not None else cfg.get("input_shape") or ())
    if not shape:
        raise ConfigError(
            "config.model.input_shape is missing: give one example's shape, e.g. (28, 28, 1)"
        )
    kwargs = dict(cfg.get("kwargs") or {})
    try:
        # The module's initial weights come from this seed; the caller's torch RNG is left as it
        # was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(cfg.get("seed", 0)))
            module = factory(**kwargs)
    except TypeError as error:
        raise ConfigError(
            f"config.model.kwargs={kwargs}: {cfg['factory']} rejects them ({error})"
        ) from None
    if not isinstance(module, torch.nn.Module):
        raise ConfigError(
            f"config.model.factory={cfg['factory']!r} returned {type(module).__name__}, not a "
            "torch.nn.Module"
        )
    example = torch.zeros((2, *shape))
    try:
        return from_torch(
            module,
            example,
            num_classes=num_classes,
            classifier=cfg.get("classifier") or None,
            input_layout=cfg.get("input_layout", "NHWC"),
            reinit=bool(cfg.get("reinit", False)),
        )
    except TorchBridgeError as error:
        raise ConfigError(f"config.model ({cfg['factory']}): {error}") from None
