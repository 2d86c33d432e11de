"""Which submodule was running when a trace failed, and the one-line error that says so.

A torch forward traced through torchax fails deep inside an op lowering; the user needs the
op and the layer. `module_calls(module)` keeps a stack of the submodules being run (forward
pre-hooks push, forward hooks pop; a failing forward never pops), so after an exception
its top is the innermost module that was running. `describe_failure` turns the exception
into a `TorchBridgeError` naming the op (for a missing lowering) and that module.

    with module_calls(module) as calls:
        try:
            trace()
        except Exception as error:
            raise describe_failure(error, calls.running, module) from None
"""

from __future__ import annotations

import contextlib
import re

import jax
import torch
from torchax import tensor as torchax_tensor

TORCHAX_VERSION = "0.0.14.dev20261026"
_MISSING_OP = re.compile(r"Operator with name (\S+) has no lowering")
# A traced value read on the host (float(t), t.item(), `if t:`) inside the forward.
_HOST_READS = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerBoolConversionError,
    jax.errors.TracerIntegerConversionError,
)


class TorchBridgeError(ValueError):
    """A torch module (or its use) the JAX bridge cannot handle; the message names the fix."""


class ModuleCalls:
    """The submodules of one forward: `running` (a stack, innermost last) and `called`
    (qualified names in the order their forward started)."""

    def __init__(self):
        self.running: list[str] = []
        self.called: list[str] = []


@contextlib.contextmanager
def module_calls(module: torch.nn.Module):
    """Yields a `ModuleCalls` that hooks on every submodule fill while the block runs."""
    calls = ModuleCalls()

    def enter(name):
        calls.running.append(name)
        calls.called.append(name)

    def leave():
        calls.running.pop()  # returns None: a forward hook's return value replaces the output

    handles = []
    for name, sub in module.named_modules():
        handles.append(sub.register_forward_pre_hook(lambda m, args, name=name: enter(name)))
        handles.append(sub.register_forward_hook(lambda m, args, out: leave()))
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def module_label(module: torch.nn.Module, path: str) -> str:
    """`features.3 (MyLayer)`; the module itself is `the root module (Net)`."""
    kind = type(module.get_submodule(path)).__name__
    return f"{path} ({kind})" if path else f"the root module ({kind})"


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".strip()


def describe_failure(
    error: BaseException, running: list[str], module: torch.nn.Module
) -> TorchBridgeError:
    """The one-line `TorchBridgeError` for an exception raised while tracing `module`."""
    where = module_label(module, running[-1] if running else "")
    missing = (
        _MISSING_OP.search(str(error))
        if isinstance(error, torchax_tensor.OperatorNotFound)
        else None
    )
    if missing:
        return TorchBridgeError(
            f"torch op {missing.group(1)} used by {where} is not supported by the JAX bridge "
            f"(torchax {TORCHAX_VERSION} has no lowering for it); replace the layer with supported "
            "ops (see docs/torch_bridge.md) or register a JAX lowering with "
            f"sequax.engine.torch_bridge.bridge_environment().override_op_definition"
        )
    hint = ""
    if "mixed math between XLATensor and torch.Tensor" in str(error):
        hint = (
            "; it computes with a CPU tensor created inside forward (torch.tensor(...) without a "
            "device, or a plain attribute tensor): create it from the input (x.new_tensor) or "
            "register it as a buffer"
        )
    elif isinstance(error, _HOST_READS):
        hint = (
            "; it reads a traced value on the host (float(t), t.item(), if t: ...), which a "
            "compiled program cannot do: keep the computation in tensor ops"
        )
    return TorchBridgeError(
        f"the forward of {where} could not be traced into JAX: {first_line(error)}{hint}"
    )
