"""Torch backbones trained by sequax: a torch `nn.Module` becomes a sequax `Model`.

The module's forward is traced into JAX with torchax (pinned 0.0.14.dev20261026), its
parameters and buffers become pytrees keyed by their torch names, and trained values go
back into the module afterwards. See docs/torch_bridge.md for what is known to work.

    from sequax.engine.torch_bridge import from_torch, write_back
    model = from_torch(net, np.zeros((2, 28, 28, 1), np.float32))  # NHWC, as sequax feeds it
    write_back(net, result.state.params, result.state.model_state)
"""

from sequax.engine.torch_bridge.bridge import (
    from_torch,
    module_tensors,
    reset_parameters,
    to_state_dict,
    write_back,
)
from sequax.engine.torch_bridge.environment import batch_norm_jax, bridge_environment
from sequax.engine.torch_bridge.tracing import TorchBridgeError

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
