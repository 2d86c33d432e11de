"""CODA-Prompt: a frozen ViT prefix-tuned by an attention-weighted sum of prompt components.

Each prompted layer l (0-4 in the paper) holds a pool of components P_l [pool, L, D], keys
K_l [pool, D] and attention vectors A_l [pool, D]. The query q is the frozen ViT's [CLS]
feature (no prompts); component k's weight is α_k = cos(q ⊙ A_k, K_k) and the layer's prompt
Σ_k α_k P_k [B, L, D], whose first L/2 tokens are prepended to the layer's attention keys and
the last L/2 to its values (prefix-tuning: `core/vit.py` `prefixes`). A linear head reads the
prompted pass's [CLS]. The pool is split evenly over the tasks (pt = pool // num_tasks): task t
trains components [t·pt, (t+1)·pt), uses the earlier ones detached (stop-gradient) and not
the later ones; evaluation uses [0, (t+1)·pt). When task t starts, its components of P, K and
A are re-drawn by Gram-Schmidt against the components before them (random normal vectors
minus their projections on every earlier component, then normalised). The loss is the
cross-entropy over the current task's classes (earlier classes masked out, as the reference's
`logits[:, :known] = -inf` over `logits[:, :total]`) plus the orthogonality penalty
ortho_mu · Σ_l [pen(K_l) + pen(A_l) + pen(P_l)], pen(T) = mean((T Tᵀ - I)²) over the
components in use (rows of P_l flattened to L·D). Frozen: the ViT; trained: P, K, A, head.

    algorithm = CodaPrompt(num_tasks=10, pool_size=100, prompt_length=8, cache_examples=5000)

Hyper-parameters:
  num_tasks: tasks of the stream (the reference's n_tasks): the pool is split over them;
    a task past the last component draws and trains none (only the head learns).
  pool_size: components per prompted layer (100); at least num_tasks.
  prompt_length: L, tokens of a layer's prompt (8): L/2 prefix keys and L/2 prefix values.
  ortho_mu: weight of the orthogonality penalty (0.0 in LAMDA-PILOT's exps/coda_prompt.json).
  prompt_layers: the prefixed layers ((0, 1, 2, 3, 4)).
  cache_examples: slots of the frozen-feature cache of the queries (0: off, computed every
    step; else at least the largest task: `sequax.algorithms.feature_cache`).

Parameters are {"vit": the frozen ViT's, "prompt": {"p" [layers, pool, L, D], "k" [layers,
pool, D], "a" [layers, pool, D]}, "head": {"kernel" [D, C], "bias" [C]}}. The wrapped
model's `apply` takes CODA's keywords: `frozen=True` (the plain ViT's outputs: the query),
`query` (given queries), `offset` (added to "prompt") and `task` (the components in use;
None: the whole pool).

Deviations from the reference:
  * `start_task` may only change the method's state, not the parameters, so the re-drawn
    components live in the state as an offset (`algo["offset"]`, set to the new components
    minus the parameters' values in those rows): the components the network uses are
    params["prompt"] + offset. Gradients, and the updates of any optimizer without weight
    decay (the reference's Adam, weight_decay 0), are those of the reference; with weight
    decay the decay acts on the parameters' part only. The prompt parameters start at zero,
    so every component is zero until its task's Gram-Schmidt draw, as in the reference.
  * Gram-Schmidt's random vectors are our own draws (jax.random.normal from the task's key,
    one per layer, tensor and component), not torch's `randn_like`; a zero earlier component
    (norm² < 1e-8) is skipped instead of the reference's redraw loop (which cannot end then).
  * The head is one [D, C] linear head over all classes with torch's nn.Linear init, as the
    reference's `fc`; the train mask comes from the classes of the task's examples.

References:
  Smith, Karlinsky, Gutta, Cascante-Bonilla, Kim, Arbelle, Panda, Feris, Kira, "CODA-Prompt:
  COntinual Decomposed Attention-based Prompting for Rehearsal-Free Continual Learning", CVPR
  2023. Code: sun-hailong/LAMDA-PILOT `models/coda_prompt.py`, `backbone/prompt.py`
  (`CodaPrompt`: forward, gram_schmidt, ortho_penalty), `backbone/vit_coda_promtpt.py`,
  `utils/inc_net.py` (`CodaPromptVitNet`); aimagelab/mammoth `models/coda_prompt.py`.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax
from jax import lax

from sequax.algorithms.feature_cache import cached_features, compute_features
from sequax.core.models import Model
from sequax.core.param_groups import trainable_mask
from sequax.core.protocol import Algorithm, is_number
from sequax.core.vit import ViT

CACHE_BATCH = 128  # examples per batch of the frozen-feature pass in start_task
MASKED = -1e30  # the logit of a class outside the current task (the reference's -inf)
TENSORS = ("k", "a", "p")


def normalize(x: jax.Array, axis: int = -1) -> jax.Array:
    """torch's F.normalize (x / max(||x||, 1e-12)) with a finite gradient at zero."""
    sq = jnp.sum(x * x, axis=axis, keepdims=True)
    big = sq > 1e-24
    return x / jnp.where(big, jnp.sqrt(jnp.where(big, sq, 1.0)), 1e-12)


def component_range(task, pool: int, per_task: int):
    """(s, f): task `task` trains components [s, f) and uses [0, f); None: the whole pool."""
    if task is None:
        return 0, pool
    return jnp.minimum(task * per_task, pool), jnp.minimum((task + 1) * per_task, pool)


def detach_before(t, start):
    """`t` [pool, ...] with its rows before `start` detached (stop-gradient)."""
    rows = jnp.arange(t.shape[0]).reshape(-1, *[1] * (t.ndim - 1))
    return jnp.where(rows < start, lax.stop_gradient(t), t)


def layer_prompt(query, keys, attention, components, start, stop):
    """CodaPrompt.forward for one layer: α = cos(q ⊙ A, K) over the components [0, stop),
    those before `start` detached; the prompt Σ α P [B, L, D]."""
    rows = jnp.arange(keys.shape[0])
    keys, attention, components = (detach_before(t, start) for t in (keys, attention, components))
    weights = jnp.einsum("bkd,kd->bk", normalize(query[:, None, :] * attention), normalize(keys))
    weights = jnp.where(rows < stop, weights, 0.0)
    return jnp.einsum("bk,kld->bld", weights, components)


def ortho_penalty(t, start, stop):
    """((T Tᵀ - I)²).mean() over the rows [0, stop) of T [pool, n], rows before `start`
    detached (the reference's ortho_penalty of the concatenated K, A or flattened P)."""
    rows = jnp.arange(t.shape[0])
    t = detach_before(t, start)
    used = (rows < stop).astype(t.dtype)
    gram = t @ t.T - jnp.eye(t.shape[0], dtype=t.dtype)
    return jnp.sum(gram**2 * used[:, None] * used[None, :]) / jnp.maximum(used.sum(), 1.0) ** 2


def prompt_penalty(prompt, start, stop):
    """Σ over layers of pen(K) + pen(A) + pen(P flattened)."""
    penalty = jax.vmap(ortho_penalty, in_axes=(0, None, None))
    return sum(
        penalty(prompt[n].reshape(*prompt[n].shape[:2], -1), start, stop).sum() for n in TENSORS
    )


def gram_schmidt(vectors, start, count: int, key):
    """The reference's gram_schmidt on rows [pool, n]: rows before `start` kept, rows
    [start, start + count) re-drawn (a normal vector minus its projections on every earlier
    row, then normalised), rows after them zero."""
    pool, n = vectors.shape
    rows = jnp.arange(pool)
    basis = jnp.where((rows < start)[:, None], vectors, 0.0)

    def draw(i, basis):
        k = start + i
        v = jax.random.normal(jax.random.fold_in(key, i), (n,), vectors.dtype)
        sq = jnp.sum(basis * basis, axis=1)
        usable = (rows < k) & (sq >= 1e-8)
        coef = jnp.where(usable, (basis @ v) / jnp.where(usable, sq, 1.0), 0.0)
        return basis.at[k].set(v - coef @ basis, mode="drop")

    basis = lax.fori_loop(0, count, draw, basis)
    new = ((rows >= start) & (rows < start + count))[:, None]
    norm = jnp.linalg.norm(basis, axis=1, keepdims=True)
    return jnp.where(new, basis / jnp.where(new, norm, 1.0), basis)


def torch_linear_init(key, fan_in: int, fan_out: int):
    """nn.Linear's default init: U(±1/sqrt(fan_in)) for the weight and the bias."""
    bound = 1.0 / math.sqrt(fan_in)
    wkey, bkey = jax.random.split(key)
    return {
        "kernel": jax.random.uniform(wkey, (fan_in, fan_out), jnp.float32, -bound, bound),
        "bias": jax.random.uniform(bkey, (fan_out,), jnp.float32, -bound, bound),
    }


@dataclasses.dataclass(frozen=True)
class CodaPrompt(Algorithm):
    """CODA-Prompt (see the module docstring)."""

    needs_boundaries = "each task trains its own components, drawn when the task starts"
    example_index = True

    num_tasks: int = 10
    pool_size: int = 100
    prompt_length: int = 8
    ortho_mu: float = 0.0
    prompt_layers: tuple[int, ...] = (0, 1, 2, 3, 4)
    cache_examples: int = 0

    def __post_init__(self):
        object.__setattr__(self, "prompt_layers", tuple(int(x) for x in self.prompt_layers))
        if not (isinstance(self.num_tasks, int) and self.num_tasks >= 1):
            raise ValueError(f"CodaPrompt num_tasks={self.num_tasks!r} must be an int >= 1")
        if not (isinstance(self.pool_size, int) and self.pool_size >= self.num_tasks):
            raise ValueError(
                f"CodaPrompt pool_size={self.pool_size!r} must be an int >= num_tasks="
                f"{self.num_tasks} (each task trains pool_size // num_tasks components)"
            )
        if not (isinstance(self.prompt_length, int) and self.prompt_length >= 2):
            raise ValueError(f"CodaPrompt prompt_length={self.prompt_length!r} must be >= 2")
        if self.prompt_length % 2:
            raise ValueError(
                f"CodaPrompt prompt_length={self.prompt_length} must be even (half keys, "
                "half values)"
            )
        if is_number(self.ortho_mu) and self.ortho_mu < 0:
            raise ValueError(f"CodaPrompt ortho_mu={self.ortho_mu} must be >= 0")
        layers = self.prompt_layers
        if not layers or min(layers) < 0 or len(set(layers)) != len(layers):
            raise ValueError(
                f"CodaPrompt prompt_layers={layers} must be distinct non-negative layers"
            )
        if not (isinstance(self.cache_examples, int) and self.cache_examples >= 0):
            raise ValueError(
                f"CodaPrompt cache_examples={self.cache_examples!r} must be an int >= 0 (0: off)"
            )

    @property
    def per_task(self) -> int:
        return self.pool_size // self.num_tasks

    # ---- the network ---------------------------------------------------------------------
    def wrap_model(self, model):
        vit = model.module
        if not isinstance(vit, ViT):
            raise ValueError("CODA-Prompt needs a ViT backbone: set config.model.name='vit'")
        if max(self.prompt_layers) >= vit.depth:
            raise ValueError(
                f"CodaPrompt prompt_layers={self.prompt_layers} reach past the ViT's "
                f"{vit.depth} layers; set config.algorithm.prompt_layers below {vit.depth}"
            )
        width, num_classes = vit.width, model.num_classes
        layers, pool, length, per_task = (
            self.prompt_layers,
            self.pool_size,
            self.prompt_length,
            self.per_task,
        )

        def init(key, x):
            vit_params, model_state = model.init(key, x)
            n = len(layers)
            prompt = {
                "k": jnp.zeros((n, pool, width), jnp.float32),
                "a": jnp.zeros((n, pool, width), jnp.float32),
                "p": jnp.zeros((n, pool, length, width), jnp.float32),
            }
            head = torch_linear_init(jax.random.fold_in(key, 1), width, num_classes)
            return {"vit": vit_params, "prompt": prompt, "head": head}, model_state

        def apply(
            params, model_state, x, *, train, rng=None, frozen=False, query=None, offset=None,
            task=None,
        ):  # fmt: skip
            del train, rng  # no dropout
            vit_params = lax.stop_gradient(params["vit"])
            if frozen or query is None:
                plain = vit.apply({"params": vit_params}, x)
                if frozen:
                    return plain, model_state
                query = plain["features"]
            query = lax.stop_gradient(query)
            prompt = params["prompt"]
            if offset is not None:
                prompt = jax.tree.map(lambda p, o: p + lax.stop_gradient(o), prompt, offset)
            start, stop = component_range(task, pool, per_task)
            tokens = jax.vmap(layer_prompt, in_axes=(None, 0, 0, 0, None, None))(
                query, prompt["k"], prompt["a"], prompt["p"], start, stop
            )  # [layers, B, L, D]
            half = length // 2
            prefixes = {
                layer: (tokens[i, :, :half], tokens[i, :, half:]) for i, layer in enumerate(layers)
            }
            features = vit.apply({"params": vit_params}, x, prefixes=prefixes)["features"]
            logits = features @ params["head"]["kernel"] + params["head"]["bias"]
            return {"logits": logits, "features": features}, model_state

        return Model(
            init=init,
            apply=apply,
            num_classes=num_classes,
            trainable=lambda p: trainable_mask(p, ("prompt/.*", "head/.*")),
        )

    # ---- the method ----------------------------------------------------------------------
    def init(self, params, model_state, example_batch, rng):
        num_classes = params["head"]["bias"].shape[0]
        width = params["head"]["kernel"].shape[0]
        return {
            "offset": jax.tree.map(jnp.zeros_like, params["prompt"]),
            "current": jnp.zeros(num_classes, bool),
            "task": jnp.zeros((), jnp.int32),
            "cache": jnp.zeros((self.cache_examples, width), jnp.float32),
        }

    def start_task(self, state, task_data, rng, model):
        algo, params = state.algo, state.params
        start, _ = component_range(state.task, self.pool_size, self.per_task)
        draw = jax.vmap(gram_schmidt, in_axes=(0, None, None, 0))
        offset = {}
        for j, name in enumerate(TENSORS):
            raw, old = params["prompt"][name], algo["offset"][name]
            rows = (raw + old).reshape(*raw.shape[:2], -1)
            keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(
                jnp.arange(raw.shape[0]) * len(TENSORS) + j
            )
            drawn = draw(rows, start, self.per_task, keys).reshape(raw.shape)
            index = jnp.arange(raw.shape[1]).reshape(1, -1, *[1] * (raw.ndim - 2))
            new = (index >= start) & (index < start + self.per_task)
            offset[name] = jnp.where(new, drawn - raw, old)
        valid = jnp.arange(task_data.y.shape[0]) < task_data.size
        num_classes = algo["current"].shape[0]
        current = (
            jnp.zeros(num_classes, bool)
            .at[jnp.where(valid, task_data.y, num_classes)]
            .set(True, mode="drop")
        )
        cache = algo["cache"]
        if self.cache_examples:
            cache = compute_features(
                lambda x: self._query(params, state.model_state, x, model),
                task_data,
                CACHE_BATCH,
                self.cache_examples,
            )
        return {"offset": offset, "current": current, "task": state.task, "cache": cache}

    def _query(self, params, model_state, x, model):
        return model.apply(params, model_state, x, train=False, frozen=True)[0]["features"]

    def loss(self, params, state, batch, rng, model):
        algo = state.algo
        query = cached_features(
            algo["cache"], batch, lambda x: self._query(params, state.model_state, x, model)
        )
        outputs, model_state = model.apply(
            params, state.model_state, batch["x"], train=True, rng=rng, query=query,
            offset=algo["offset"], task=state.task,
        )  # fmt: skip
        logits = jnp.where(algo["current"], outputs["logits"], MASKED)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
        prompt = jax.tree.map(jnp.add, params["prompt"], algo["offset"])
        start, stop = component_range(state.task, self.pool_size, self.per_task)
        ortho = prompt_penalty(prompt, start, stop)
        loss = ce + self.ortho_mu * ortho
        return loss, {"model_state": model_state, "metrics": {"ce": ce, "ortho": ortho}}

    def predict(self, params, model_state, algo, x, task, model):
        outputs, _ = model.apply(
            params, model_state, x, train=False, offset=algo["offset"], task=algo["task"]
        )
        return outputs["logits"]
