"""The torch zoo's reduced ResNet-18 as sequax's flax one: converted weights, shared initial draws.

The two networks are the same architecture (`engine.models.ResNet` follows mammoth's names,
`engine.torch_bridge.zoo.ResNet` is mammoth's module), so every tensor maps one to one:

    conv   "layer2.0.conv1.weight" [O, I, kh, kw]
           -> params["layer2_0"]["conv1"]["kernel"] [kh, kw, I, O]
    shortcut "layer2.0.shortcut.0/1.*"        -> "shortcut_conv" / "shortcut_bn"
    BN     "bn1.weight", "bn1.bias"            -> params["bn1"]["scale"], ["bias"]
           "bn1.running_mean", ".running_var"  -> model_state["batch_stats"]["bn1"]["mean"], ["var"]
    linear "linear.weight" [C, D], ".bias"     -> params["linear"]["kernel"] [D, C], ["bias"]

(`num_batches_tracked` has no flax counterpart: with a numeric momentum torch never reads it.)

Why: launch/torch_compare's two ResNet-18s differ in their initial draws as well as in the
framework that runs them; `resnet18_variables` removes the first difference, so a flax run
from the torch network's own initial weights (`torch_initialised`,
`config.model.init_from="torch"`) isolates the second.

    params, model_state = resnet18_variables(net.state_dict())        # torch tensors
    params, model_state = resnet18_variables({**bridge_params, **bridge_state})  # JAX, traced too
    model = resnet18(10, nf=8, init_from="torch")   # each key: the torch draw of the same key
"""

from __future__ import annotations

import re
from typing import Any

import jax.numpy as jnp
import numpy as np

PyTree = Any

_BN_LEAVES = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}
_BLOCK = re.compile(r"layer(\d+)\.(\d+)\.(.+)")


def _array(value):
    if hasattr(value, "detach"):  # a torch tensor (a state_dict's value)
        value = value.detach().cpu().numpy()
    return value if isinstance(value, jnp.ndarray) else jnp.asarray(np.asarray(value))


def _flax_path(name: str) -> tuple[str, tuple[str, ...]] | None:
    """(collection, path in it) of one torch name; None for `num_batches_tracked`."""
    *modules, leaf = name.split(".")
    if leaf == "num_batches_tracked":
        return None
    path = ".".join(modules)
    block = _BLOCK.fullmatch(path)
    if block:  # layer2.0.conv1 -> layer2_0/conv1; layer2.0.shortcut.0 -> layer2_0/shortcut_conv
        stage, index, inner = block.groups()
        inner = {"shortcut.0": "shortcut_conv", "shortcut.1": "shortcut_bn"}.get(inner, inner)
        modules = [f"layer{stage}_{index}", inner]
    if modules[-1].startswith("conv") or modules[-1] == "shortcut_conv":
        if leaf != "weight":
            raise ValueError(f"{name!r}: the ResNet's convolutions have no bias")
        return "params", (*modules, "kernel")
    if modules[-1].startswith("bn") or modules[-1] == "shortcut_bn":
        collection, flax_leaf = _BN_LEAVES[leaf]
        return collection, (*modules, flax_leaf)
    if modules == ["linear"]:
        return "params", ("linear", {"weight": "kernel", "bias": "bias"}[leaf])
    raise ValueError(
        f"{name!r} is not a tensor of the reduced ResNet-18 (engine.torch_bridge.zoo.ResNet)"
    )


def resnet18_variables(tensors: dict[str, Any]) -> tuple[PyTree, PyTree]:
    """The flax ResNet-18's `(params, model_state)` from the torch zoo ResNet-18's tensors.

    `tensors`: torch name -> value, every parameter and buffer: a `state_dict()` (torch
    tensors) or the bridge's `{**params, **model_state}` (JAX arrays, traced ones included:
    the conversion is transposes and reshapes only, so it runs under jit and vmap). Arrays
    with a leading run axis (a vmapped state) are not accepted: vmap the conversion instead.
    """
    params: dict = {}
    batch_stats: dict = {}
    for name, value in tensors.items():
        where = _flax_path(name)
        if where is None:
            continue
        collection, path = where
        value = _array(value)
        if path[-1] == "kernel" and value.ndim == 4:
            value = jnp.transpose(value, (2, 3, 1, 0))  # OIHW -> HWIO
        elif path[-1] == "kernel":
            value = value.T  # nn.Linear's [out, in] -> nn.Dense's [in, out]
        node = params if collection == "params" else batch_stats
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value.astype(jnp.float32)
    return params, {"batch_stats": batch_stats}


def torch_initialised(model, num_classes: int, nf: int):
    """`model` (the flax `resnet18(num_classes, nf)`) whose `init(key, x)` returns the weights
    the torch zoo ResNet-18 draws from the same key through the bridge (`reinit=True`, as
    `config.model.name="torch"` draws them), converted. Same key, same weights: a vmapped run
    of seed k starts where launch/torch_compare's torch ResNet-18 of seed k starts."""
    import torch

    from sequax.engine.torch_bridge.bridge import from_torch
    from sequax.engine.torch_bridge.zoo import resnet18_reduced

    bridged = {}  # one bridge per example shape (from_torch traces the module to check it)

    def init(key, x):
        shape = tuple(x.shape[1:])
        if shape not in bridged:
            with torch.random.fork_rng(devices=[]):  # every weight is re-drawn from `key` below
                torch.manual_seed(0)
                net = resnet18_reduced(num_classes=num_classes, nf=nf, in_channels=shape[-1])
            bridged[shape] = from_torch(
                net, np.zeros((2, *shape), np.float32), num_classes=num_classes, reinit=True
            )
        params, model_state = bridged[shape].init(key, x)
        return resnet18_variables({**params, **model_state})

    return model._replace(init=init)
