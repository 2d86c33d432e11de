"""Torch backbones trained by sequax: a torch `nn.Module` becomes a sequax `Model`.

The module's forward is traced into JAX with torchax (pinned 0.0.14.dev20261026), its
parameters and buffers become pytrees keyed by their torch names, and trained values go
back into the module afterwards. See docs/torch_bridge.md for what is known to work.

    from sequax.engine.torch_bridge import from_torch, write_back
    model = from_torch(net, np.zeros((2, 28, 28, 1), np.float32))  # NHWC, as sequax feeds it
    write_back(net, result.state.params, result.state.model_state)
"""

import importlib

# Resolved on first use (PEP 562), so that `sequax.engine.torch_bridge.zoo` (plain torch
# modules) imports without torchax, e.g. for the PyTorch loops of the benchmarks.
_EXPORTS = {
    "from_torch": "bridge",
    "module_tensors": "bridge",
    "reset_parameters": "bridge",
    "to_state_dict": "bridge",
    "write_back": "bridge",
    "batch_norm_jax": "environment",
    "bridge_environment": "environment",
    "TorchBridgeError": "tracing",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


__all__ = [
    "TorchBridgeError",
    "batch_norm_jax",
    "bridge_environment",
    "from_torch",
    "module_tensors",
    "reset_parameters",
    "to_state_dict",
    "write_back",
]
