"""Hard Attention to the Task (HAT): per-task unit gates that protect the units earlier tasks use.

Each hidden layer l of the MLP has a learned task embedding e_t^l (one row per task, in the
parameters) and its units are multiplied by the gate a_t^l = sigmoid(s e_t^l). Training task t:

- s is annealed within every epoch, s = 1/s_max + (s_max - 1/s_max) (b - 1)/(B - 1) at batch
  b of B (the paper's formula; b comes from `state.step`, so every task shares one compile),
  and evaluation uses s = s_max (nearly binary gates);
- the loss is the cross-entropy over task t's own classes (the paper's per-task heads: one
  masked head) plus c times the attention sparsity regulariser
  R = sum_l sum_i a_{t,i}^l (1 - a_{<t,i}^l) / sum_l sum_i (1 - a_{<t,i}^l);
- gradient conditioning: with a_{<t} the cumulative gates (the elementwise max of every
  ended task's gates at s_max), the gradient of the weight from unit j to unit i is scaled
  by 1 - min(a_{<t,i}^l, a_{<t,j}^{l-1}) (first layer and biases: 1 - a_{<t,i}^l);
- embedding gradient compensation: the embeddings' gradient is scaled by
  s_max/s (cosh(clamp(s e, ±thres_cosh)) + 1) / (cosh(e) + 1), and after the optimizer step
  the embeddings are clamped to ±thres_emb.

Conditioning, compensation and gradient-norm clipping are one optax transformation chained in
front of the optimizer (`gradient_transform`, fed the cumulative gates and s through
aux["tx_args"]); the clamp is one chained after it (`projection_transform`). The gated MLP is
`gated_mlp`: the parameters of `engine.models.mlp` plus {"hat_embeddings": {"layer_l": [T,
w_l]}}, built by `wrap_model`. `start_task` records the task's classes and size; `predict`
gates with each test example's task (task-IL).

    algorithm = HAT(num_tasks=5, s_max=400.0, c=0.75)
    model = algorithm.wrap_model(mlp(10, widths=(100, 100), init="torch"))

References:
  Serrà, Surís, Miron, Karatzoglou, "Overcoming Catastrophic Forgetting with Hard Attention
  to the Task", ICML 2018 (official code joansj/hat: `approaches/hat.py`, `networks/mlp_hat.py`,
  whose defaults the hyper-parameters below take).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from sequax.algorithms.losses import cross_entropy
from sequax.core.clipping import clip_grad_norm
from sequax.core.heads import mask_logits
from sequax.core.models import MLP, Model
from sequax.core.protocol import Algorithm, is_number

EMBEDDINGS = "hat_embeddings"  # params[EMBEDDINGS]["layer_l"]: float32 [num_tasks, width_l]


class HATState(NamedTuple):
    cumulative: dict  # "layer_l": float32 [width_l], max of ended tasks' gates at s_max (0: free)
    classes: jax.Array  # bool [num_tasks, num_classes]: each started task's classes
    task_start: jax.Array  # int32: `state.step` when the current task started
    task_size: jax.Array  # int32: the current task's training examples (0: not started)


def _layers(tree) -> list[str]:
    return sorted(tree, key=lambda name: int(name.rsplit("_", 1)[1]))


def hat_gates(embeddings: dict, task: jax.Array, s) -> dict:
    """{"layer_l": sigmoid(s e[task])}: [w] for a scalar task, [B, w] for per-example tasks."""
    return {name: jax.nn.sigmoid(s * embeddings[name][task]) for name in embeddings}


def gated_mlp(model: Model, num_tasks: int) -> Model:
    """`engine.models.mlp` with HAT's gate on each hidden layer (mlp_hat.py without its input
    dropout): `apply(..., task, s)` returns {"logits", "features", "gates"}."""
    module = model.module
    if not isinstance(module, MLP):  # a ValueError: loop.run reports it as a ConfigError
        message = (
            "HAT gates the hidden units of the MLP: use config.model.name='mlp' without "
            "data.augment/normalize"
        )
        raise ValueError(message)  # noqa: TRY004
    widths = tuple(module.widths)

    def init(key, x):
        params, model_state = model.init(key, x)
        keys = jax.random.split(jax.random.fold_in(key, 1), len(widths))
        # torch.nn.Embedding's N(0, 1), as the official code's task embeddings.
        embeddings = {
            f"layer_{i}": jax.random.normal(k, (num_tasks, w))
            for i, (k, w) in enumerate(zip(keys, widths))
        }
        return {**params, EMBEDDINGS: embeddings}, model_state

    def apply(params, model_state, x, *, train, rng=None, task=None, s=None):
        if task is None or s is None:
            raise ValueError(
                "HAT's gated MLP needs the task and the gate slope s: apply(..., task=t, s=s)"
            )
        gates = hat_gates(params[EMBEDDINGS], task, s)
        h = x.reshape(x.shape[0], -1)
        for i, name in enumerate(_layers(gates)):
            h = jax.nn.relu(h @ params[f"Dense_{i}"]["kernel"] + params[f"Dense_{i}"]["bias"])
            if train and module.dropout > 0 and rng is not None:  # the MLP's dropout, then the gate
                keep = jax.random.bernoulli(jax.random.fold_in(rng, i), 1 - module.dropout, h.shape)
                h = jnp.where(keep, h / (1 - module.dropout), 0.0)
            h = h * gates[name]
        head = params[f"Dense_{len(widths)}"]
        return {
            "logits": h @ head["kernel"] + head["bias"],
            "features": h,
            "gates": gates,
        }, model_state

    return Model(init=init, apply=apply, num_classes=model.num_classes)


def annealed_s(s_max, step, task_start, task_size, batch_size: int):
    """The paper's s at the step's batch b (1-based) of the B = task_size // batch_size of an
    epoch: 1/s_max + (s_max - 1/s_max)(b - 1)/(B - 1). (The official code uses (b - 1)/B.)"""
    batches = jnp.maximum(task_size // batch_size, 1)
    b = (step - task_start) % batches
    return 1 / s_max + (s_max - 1 / s_max) * b / jnp.maximum(batches - 1, 1)


def attention_sparsity(gates: dict, cumulative: dict) -> jax.Array:
    """R = sum a (1 - a_<t) / sum (1 - a_<t) over every hidden unit (mlp_hat's `criterion`)."""
    used = sum(jnp.sum(gates[n] * (1 - cumulative[n])) for n in gates)
    free = sum(jnp.sum(1 - cumulative[n]) for n in gates)
    return used / jnp.maximum(free, 1e-12)  # every unit taken: used is 0 too


def condition_gradients(grads: dict, cumulative: dict) -> dict:
    """Scales each hidden layer's gradient by 1 - min(post, pre) of the cumulative gates (the
    official `mask_back`; flax kernels are [in, out]); the head and embeddings pass unchanged."""
    grads = dict(grads)
    previous = None
    for i, name in enumerate(_layers(cumulative)):
        post = cumulative[name]
        kernel = (
            post[None, :] if previous is None else jnp.minimum(previous[:, None], post[None, :])
        )
        layer = grads[f"Dense_{i}"]
        grads[f"Dense_{i}"] = {
            **layer,
            "kernel": layer["kernel"] * (1 - kernel),
            "bias": layer["bias"] * (1 - post),
        }
        previous = post
    return grads


def compensate_embeddings(grads: dict, params: dict, s, s_max, thres_cosh) -> dict:
    """Multiplies the embeddings' gradient by s_max/s (cosh(clamp(s e)) + 1)/(cosh(e) + 1)."""

    def scale(g, e):
        return (
            g
            * (s_max / s)
            * (jnp.cosh(jnp.clip(s * e, -thres_cosh, thres_cosh)) + 1)
            / (jnp.cosh(e) + 1)
        )

    return {**grads, EMBEDDINGS: jax.tree.map(scale, grads[EMBEDDINGS], params[EMBEDDINGS])}


@dataclasses.dataclass(frozen=True)
class HAT(Algorithm):
    """HAT (task-IL).

    Attributes:
      num_tasks: tasks in the stream (rows of each task embedding).
      s_max: the gate slope at the end of each epoch and at evaluation (official 400; grid
        25-800). Larger: harder, more binary gates, less forgetting.
      c: weight of the attention sparsity regulariser (official `lamb` 0.75; grid 0.1-4).
        Larger: fewer units per task, more capacity left for later tasks.
      thres_cosh: clamp of s e inside the compensation's cosh (official 50), against overflow.
      thres_emb: embeddings are clamped to [-thres_emb, thres_emb] after each step (official 6).
      clipgrad: gradient-norm clip after conditioning and compensation (official 10000).
    """

    needs_boundaries = "one attention mask per task, chosen by the task id"

    num_tasks: int = 5
    s_max: float = 400.0
    c: float = 0.75
    thres_cosh: float = 50.0
    thres_emb: float = 6.0
    clipgrad: float = 10000.0

    def __post_init__(self):
        if not (isinstance(self.num_tasks, int) and self.num_tasks >= 1):
            raise ValueError(f"HAT num_tasks={self.num_tasks!r} must be a positive integer")
        for name in ("s_max", "thres_cosh", "thres_emb", "clipgrad"):
            value = getattr(self, name)
            if is_number(value) and not value > 0:
                raise ValueError(f"HAT {name}={value!r} must be > 0")
        if is_number(self.c) and self.c < 0:
            raise ValueError(f"HAT c={self.c!r} must be >= 0")

    def wrap_model(self, model: Model) -> Model:
        return gated_mlp(model, self.num_tasks)

    def task_model(self, model: Model, state) -> Model:
        """`model` (the gated MLP) with the current task's gates at s_max bound: the network a
        regulariser combined with HAT sees (`combine(HAT(...), EWC(...))`: EWC's Fisher and
        anchor are those of the task's own gated network, as HAT evaluates it)."""

        def apply(params, model_state, x, *, train, rng=None, task=None, s=None):
            return model.apply(
                params,
                model_state,
                x,
                train=train,
                rng=rng,
                task=state.task if task is None else task,
                s=self.s_max if s is None else s,
            )

        return model._replace(apply=apply, module=None)

    def init(self, params, model_state, example_batch, rng):
        if EMBEDDINGS not in params:
            raise ValueError(
                "HAT's parameters lack the task embeddings: build the model with "
                "HAT.wrap_model(model)"
            )
        head = params[f"Dense_{len(params[EMBEDDINGS])}"]
        return HATState(
            cumulative={
                n: jnp.zeros(e.shape[1:], jnp.float32) for n, e in params[EMBEDDINGS].items()
            },
            classes=jnp.zeros((self.num_tasks, head["bias"].shape[0]), bool),
            task_start=jnp.zeros((), jnp.int32),
            task_size=jnp.zeros((), jnp.int32),
        )

    def start_task(self, state, task_data, rng, model):
        algo, num_classes = state.algo, state.algo.classes.shape[1]
        valid = jnp.arange(task_data.y.shape[0]) < task_data.size
        present = (
            jnp.zeros(num_classes, bool)
            .at[jnp.where(valid, task_data.y, num_classes)]
            .set(True, mode="drop")
        )
        return algo._replace(
            classes=algo.classes.at[state.task].set(present),
            task_start=state.step,
            task_size=jnp.asarray(task_data.size, jnp.int32),
        )

    def loss(self, params, state, batch, rng, model):
        algo = state.algo
        s = annealed_s(self.s_max, state.step, algo.task_start, algo.task_size, batch["y"].shape[0])
        outputs, model_state = model.apply(
            params, state.model_state, batch["x"], train=True, rng=rng, task=state.task, s=s
        )
        own = algo.classes[state.task]  # the task's head; all classes if start_task never ran
        ce = cross_entropy(mask_logits(outputs["logits"], own | ~own.any()), batch["y"])
        sparsity = attention_sparsity(outputs["gates"], algo.cumulative)
        metrics = {"ce": ce, "sparsity": sparsity, "s": s}
        return ce + self.c * sparsity, {
            "model_state": model_state,
            "metrics": metrics,
            "tx_args": {"cumulative": algo.cumulative, "s": s},
        }

    def optimizer(self, tx):
        """Gradient conditioning, compensation and clipping in front of `tx`; the embedding
        clamp after it."""
        return optax.chain(self.gradient_transform(), tx, self.projection_transform())

    def gradient_transform(self):
        def update(grads, opt_state, params=None, *, cumulative, s, **extra):
            grads = compensate_embeddings(
                condition_gradients(grads, cumulative), params, s, self.s_max, self.thres_cosh
            )
            return clip_grad_norm(grads, self.clipgrad), opt_state

        return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)

    def projection_transform(self):
        def update(
            updates, opt_state, params=None, **extra
        ):  # new embeddings clamped to ±thres_emb
            clamp = lambda u, p: jnp.clip(p + u, -self.thres_emb, self.thres_emb) - p
            return {
                **updates,
                EMBEDDINGS: jax.tree.map(clamp, updates[EMBEDDINGS], params[EMBEDDINGS]),
            }, opt_state

        return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)

    def update(self, algo, state, batch, aux, rng):
        return algo

    def end_task(self, state, task_data, rng, model):
        gates = hat_gates(state.params[EMBEDDINGS], state.task, self.s_max)
        return state.algo._replace(
            cumulative=jax.tree.map(jnp.maximum, state.algo.cumulative, gates)
        )

    def predict(self, params, model_state, algo, x, task, model):
        return model.apply(params, model_state, x, train=False, task=task, s=self.s_max)[0][
            "logits"
        ]
