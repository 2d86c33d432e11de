"""A torch `nn.Module` as a sequax `Model`: its forward traced into JAX, its tensors as pytrees.

    model = from_torch(net, np.zeros((2, 28, 28, 1), np.float32))   # a sequax-layout batch
    params, model_state = model.init(key, x)        # the module's own weights and buffers
    outputs, model_state = model.apply(params, model_state, x, train=True, rng=key)
    write_back(net, state.params, state.model_state)  # trained values back into `net`

How the forward runs: `apply` wraps the JAX arrays as torchax tensors, calls the module
through `torch.func.functional_call` inside the bridge's torchax environment (every aten op
lowers to a JAX function, so `apply` is an ordinary JAX function: jit, grad, vmap and
sharding work on it), and unwraps the outputs. Nothing of the module's own storage is read
or written by `apply`; its tensors live in `params` / `model_state`.

Conventions (each is documented in docs/torch_bridge.md):
- Inputs arrive in sequax's layout, float32 [B, H, W, C] (`engine.task_data.gather_batch`);
  torch modules expect [B, C, H, W], so 4-D inputs are transposed at the boundary
  (`input_layout="NCHW"` turns that off). Other ranks pass unchanged.
- `params`: every parameter with `requires_grad=True`, float32, keyed by its torch name
  (`"features.0.weight"`). `model_state`: every buffer (BatchNorm's running statistics,
  `num_batches_tracked` as int32) and every frozen parameter (`requires_grad=False`, never
  trained). Write-back restores each tensor's torch dtype.
- Features: the input of the classifier, flattened to [B, D]; the classifier is the
  `nn.Linear` whose forward ran last in the example forward, or the submodule named by
  `classifier=`.
- `train=True` runs `module.train()` (BatchNorm uses and updates batch statistics exactly as
  torch; dropout draws from `rng`), `train=False` runs `module.eval()`; the module's own mode
  is restored afterwards.
- Initialisation: `init(key, x)` returns the module's weights as constructed, for every key:
  vmapped runs (seeds) then start from the same weights and differ in data order and dropout.
  `reinit=True` re-draws them from `key` with each submodule's `reset_parameters()` (torch's
  default initialisers, run in JAX); a callable `reinit(module)` runs your own initialiser.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch

from sequax.core.models import Model
from sequax.engine.torch_bridge.environment import bridge_environment
from sequax.engine.torch_bridge.tracing import (
    TorchBridgeError,
    describe_failure,
    module_calls,
    module_label,
)

PyTree = Any
INPUT_LAYOUTS = ("NHWC", "NCHW")


def _to_jax(t: torch.Tensor) -> jax.Array:
    # A copy: on CPU a JAX array may alias a numpy buffer, and torch updates its own
    # tensors in place (a BatchNorm forward would silently change `init`'s values).
    array = t.detach().cpu().numpy().copy()
    if np.issubdtype(array.dtype, np.floating):
        return jnp.asarray(array, jnp.float32)
    return jnp.asarray(array)  # int64 -> int32 (JAX without x64), bool stays bool


def module_tensors(module: torch.nn.Module) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """(params, model_state) as JAX arrays keyed by torch names (see the module docstring)."""
    params, state = {}, {}
    for name, p in module.named_parameters():
        (params if p.requires_grad else state)[name] = _to_jax(p)
    for name, b in module.named_buffers():
        state[name] = _to_jax(b)
    return params, state


def _check_module(module) -> None:
    if not isinstance(module, torch.nn.Module):
        raise TorchBridgeError(f"from_torch needs a torch.nn.Module, got {type(module).__name__}")
    for name, sub in module.named_modules():
        if (
            isinstance(sub, torch.nn.modules.batchnorm._BatchNorm)
            and sub.momentum is None
            and sub.track_running_stats
        ):
            raise TorchBridgeError(
                f"{module_label(module, name)} has momentum=None (a cumulative average, which "
                "reads num_batches_tracked on the host); set momentum to a number such as 0.1"
            )


def _as_example(example_input) -> jax.ShapeDtypeStruct:
    if isinstance(example_input, torch.Tensor):
        example_input = example_input.detach().cpu().numpy()
    shape = tuple(np.shape(example_input))
    if len(shape) < 2 or shape[0] < 1:
        raise TorchBridgeError(
            "example_input must be a batch [B, ...] in sequax's layout ([B, H, W, C] images), "
            f"got shape {shape}"
        )
    return jax.ShapeDtypeStruct(
        (2, *shape[1:]), jnp.float32
    )  # 2 rows: train-mode BatchNorm needs > 1


class _Forward:
    """The module's forward as a function of JAX arrays (the body of `apply`)."""

    def __init__(self, module: torch.nn.Module, input_layout: str):
        self.module = module
        self.env = bridge_environment()
        self.nhwc = input_layout == "NHWC"
        self.classifier: str | None = None  # set by from_torch after the example trace

    def __call__(self, params, model_state, x, train: bool, rng):
        """Returns (output, classifier input or None, new model_state, whether rng was drawn)."""
        env, module = self.env, self.module
        x = jnp.asarray(x, jnp.float32)
        if self.nhwc and x.ndim == 4:
            x = jnp.transpose(x, (0, 3, 1, 2))  # sequax NHWC -> torch NCHW
        key = jax.random.PRNGKey(0) if rng is None else rng
        captured = []
        hook = None
        if self.classifier is not None:
            hook = module.get_submodule(self.classifier).register_forward_pre_hook(
                lambda m, args: captured.append(args[0])
            )
        modes = [(m, m.training) for m in module.modules()]
        try:
            module.train(train)
            with env.override_property(prng=key):
                tensors = env.j2t_iso({**params, **model_state})
                with env:
                    output = torch.func.functional_call(module, tensors, (env.j2t_iso(x),))
                drew = env.param.prng is not key  # dropout (any random op) rotated the key
        finally:
            if hook is not None:
                hook.remove()
            for m, mode in modes:
                m.training = mode
        if not isinstance(output, torch.Tensor):
            raise TorchBridgeError(
                f"the forward of {module_label(module, '')} returned {type(output).__name__}; the "
                "bridge needs the logits as one tensor [B, num_classes] (wrap the module "
                "to return them)"
            )
        features = env.t2j_iso(captured[-1]) if captured else None
        # In-place updates (running statistics, num_batches_tracked) replaced the tensors'
        # elements; dtypes are kept so the state's structure never changes.
        new_state = {k: env.t2j_iso(tensors[k]).astype(v.dtype) for k, v in model_state.items()}
        return env.t2j_iso(output), features, new_state, drew


def from_torch(
    module: torch.nn.Module,
    example_input,
    *,
    num_classes: int | None = None,
    classifier: str | None = None,
    input_layout: str = "NHWC",
    reinit: bool | Callable[[torch.nn.Module], None] = False,
) -> Model:
    """The sequax `Model` of a torch module; its forward is traced once here to check it.

    Args:
      module: the torch network; its forward takes one tensor and returns logits [B, C].
      example_input: a batch shaped like sequax's (float [B, H, W, C] images, or [B, D]);
        only its shape is used. The forward is traced on it (abstractly, nothing runs) in
        evaluation and in training mode, so an op without a JAX lowering raises here, before
        any training.
      num_classes: when given, the logits' width must equal it.
      classifier: the qualified name of the submodule whose input are the features
        (`"fc"`, `"head.2"`); None picks the `nn.Linear` whose forward ran last.
      input_layout: "NHWC" (default) transposes 4-D inputs to NCHW for torch; "NCHW" passes
        them as they are.
      reinit: False: `init` returns the module's weights for every key. True: re-draws them
        from the key with each submodule's `reset_parameters()`. A callable
        `reinit(module)`: runs it (on the module's tensors, in JAX, under `torch.no_grad`).

    Raises:
      TorchBridgeError: not a module, an unsupported op or layer (naming op and module
        path), outputs of the wrong kind or shape, an unknown classifier name.
    """
    _check_module(module)
    if input_layout not in INPUT_LAYOUTS:
        raise TorchBridgeError(f"input_layout={input_layout!r}; use one of {INPUT_LAYOUTS}")
    params0, state0 = module_tensors(module)
    forward = _Forward(module, input_layout)
    example = _as_example(example_input)

    # ------- Trace once (abstractly) in both modes: unsupported ops fail here, with a path --
    called = []
    for train in (False, True):
        with module_calls(module) as calls:
            try:
                shapes = jax.eval_shape(
                    lambda p, s, x, key, train=train: forward(p, s, x, train, key)[:3],
                    params0,
                    state0,
                    example,
                    jax.random.PRNGKey(0),
                )
            except TorchBridgeError:
                raise
            except Exception as error:  # noqa: BLE001 - reported with the op and module path
                raise describe_failure(error, calls.running, module) from None
        called = called or list(calls.called)
    logits = shapes[0]
    if logits.ndim != 2 or logits.shape[0] != example.shape[0]:
        raise TorchBridgeError(
            f"the forward of {module_label(module, '')} returned shape {tuple(logits.shape)} for a "
            f"batch of {example.shape[0]}; the bridge needs logits [B, num_classes]"
        )
    if num_classes is not None and logits.shape[1] != num_classes:
        raise TorchBridgeError(
            f"the module returns {logits.shape[1]} logits per example but the stream has "
            f"{num_classes} classes; build it with {num_classes} outputs"
        )

    # ------- The classifier: its input are the features ---------------------------------
    if classifier is None:
        linears = [n for n in called if isinstance(module.get_submodule(n), torch.nn.Linear)]
        if not linears:
            raise TorchBridgeError(
                f"{module_label(module, '')} calls no nn.Linear, so the features (the classifier's "
                "input) are unknown; name the classifier submodule with from_torch(..., "
                "classifier='name')"
            )
        classifier = linears[-1]
    else:
        names = dict(module.named_modules())
        if classifier not in names or classifier == "":
            raise TorchBridgeError(
                f"classifier={classifier!r} is not a submodule of {type(module).__name__}; "
                f"known: {', '.join(n for n in names if n)}"
            )
        if classifier not in called:
            raise TorchBridgeError(
                f"classifier={classifier!r} is never called by the forward; name the layer "
                f"that produces the logits"
            )
    forward.classifier = classifier

    def init(key: jax.Array, x: jax.Array):
        if not reinit:
            return dict(params0), dict(state0)
        return _reinitialised(module, forward.env, key, params0, state0, reinit)

    def apply(params, model_state, x, *, train: bool, rng: jax.Array | None = None):
        with module_calls(module) as calls:  # trace time only: a failure names the layer
            try:
                logits, features, new_state, drew = forward(params, model_state, x, train, rng)
            except TorchBridgeError:
                raise
            except Exception as error:  # noqa: BLE001 - e.g. inputs of another shape than the example's
                raise describe_failure(error, calls.running, module) from None
        if drew and rng is None:  # a fixed key would repeat one dropout mask every step
            raise TorchBridgeError(
                f"{module_label(module, '')} draws random numbers in training mode (dropout); "
                f"call apply(..., train=True, rng=key) with a fresh key per step"
            )
        if features is None:  # the classifier ran in the example forward but not in this one
            raise TorchBridgeError(
                f"the classifier {classifier!r} did not run in this forward (train={train}); name "
                "a layer every forward calls with from_torch(..., classifier='name')"
            )
        features = features.reshape(features.shape[0], -1)
        return {"logits": logits, "features": features}, (new_state if train else model_state)

    return Model(init=init, apply=apply, num_classes=int(logits.shape[1]))


class _Reinit(torch.nn.Module):
    """Holds the user's module so that `functional_call` can swap in its tensors and run an
    initialiser on them (instead of a forward)."""

    def __init__(self, inner: torch.nn.Module, initialise: Callable[[torch.nn.Module], None]):
        super().__init__()
        self.inner = inner
        self.initialise = initialise

    def forward(self):
        with torch.no_grad():
            self.initialise(self.inner)


def reset_parameters(module: torch.nn.Module) -> None:
    """torch's default initialisation: `reset_parameters()` of every submodule that has one."""
    for sub in module.modules():
        if callable(getattr(sub, "reset_parameters", None)):
            sub.reset_parameters()


def _reinitialised(module, env, key, params0, state0, reinit):
    initialise = reset_parameters if reinit is True else reinit
    wrapper = _Reinit(module, initialise)
    with env.override_property(prng=key):  # every random initialiser draws from `key`
        tensors = env.j2t_iso({f"inner.{k}": v for k, v in {**params0, **state0}.items()})
        with env:
            torch.func.functional_call(wrapper, tensors, ())
    values = {k[len("inner.") :]: env.t2j_iso(t) for k, t in tensors.items()}
    params = {k: values[k].astype(v.dtype) for k, v in params0.items()}
    return params, {k: values[k].astype(v.dtype) for k, v in state0.items()}


def _host_values(params, model_state, run: int | None) -> dict[str, np.ndarray]:
    values = {**dict(params), **dict(model_state)}
    return {k: np.asarray(v if run is None else v[run]) for k, v in values.items()}


def write_back(
    module: torch.nn.Module, params: PyTree, model_state: PyTree, *, run: int | None = None
):
    """Copies trained `params` and `model_state` into `module`'s own tensors (in place).

    `run` picks one run of a vmapped state (arrays with a leading run axis). Each tensor
    keeps its torch dtype (num_batches_tracked back to int64). Returns `module`.
    """
    values = _host_values(params, model_state, run)
    with torch.no_grad():
        for name, value in values.items():
            try:
                target = module.get_parameter(name)
            except AttributeError:
                try:
                    target = module.get_buffer(name)
                except AttributeError:
                    raise TorchBridgeError(
                        f"{name!r} is not a parameter or buffer of {type(module).__name__}; write "
                        "back into the module the model was built from"
                    ) from None
            if tuple(target.shape) != value.shape:
                raise TorchBridgeError(
                    f"{name!r} has shape {value.shape} but the module's tensor is "
                    f"{tuple(target.shape)}"
                    + ("; pass run=i to pick one run of a vmapped state" if run is None else "")
                )
            target.copy_(torch.from_numpy(np.array(value)).to(target.dtype))
    return module


def to_state_dict(
    module: torch.nn.Module, params: PyTree, model_state: PyTree, *, run: int | None = None
):
    """`module.state_dict()` with the trained values, leaving `module` itself unchanged."""
    return write_back(copy.deepcopy(module), params, model_state, run=run).state_dict()
