"""The prompt pool of L2P and DualPrompt: key-query matching, top-k selection, the pull term.

Shared by `sequax.algorithms.l2p` and `sequax.algorithms.dualprompt`, as both references share
`Prompt`/`EPrompt` (LAMDA-PILOT `backbone/prompt.py`, from JH-LEE-KR/l2p-pytorch and
dualprompt-pytorch; aimagelab/mammoth `models/l2p_utils/prompt.py`,
`models/dualprompt_utils/prompt.py`):

    query = frozen ViT's [CLS] feature, no prompts                       [B, D]
    sim = l2n(query) @ l2n(keys).T                                       [B, P]
    idx = top_k(sim)                                                      [B, k]
    batchwise: idx = the k indices chosen most often over the batch, for every example
    pull = sum(l2n(keys)[idx] * l2n(query)[:, None]) / B                  (reduce_sim)
    loss = CE(logits masked to the current task's classes) - coeff * pull

`l2n` is the references' `l2_normalize`: x * rsqrt(max(sum(x^2), 1e-12)).

Also here: the pieces both methods' `Model`s and hooks share (the ViT check, the head, the
class masks, the frozen query and its cache).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax import lax

from sequax.algorithms.feature_cache import cached_features, compute_features
from sequax.core import param_groups
from sequax.core.models import Model
from sequax.core.protocol import Algorithm
from sequax.core.vit import ViT

INITS = ("uniform", "zero")  # the references' `prompt_init` / `prompt_key_init` choices
CACHE_BATCH = 128  # examples per batch when the query cache is computed at a task's start


def l2_normalize(x: jax.Array, axis: int = -1, epsilon: float = 1e-12) -> jax.Array:
    """x / max(||x||, sqrt(epsilon)), the references' `l2_normalize`."""
    square_sum = jnp.sum(x**2, axis=axis, keepdims=True)
    return x * lax.rsqrt(jnp.maximum(square_sum, epsilon))


def init_array(key: jax.Array, shape, init: str) -> jax.Array:
    """`init` "uniform": U(-1, 1) (the references' `nn.init.uniform_(p, -1, 1)`); "zero"."""
    if init == "zero":
        return jnp.zeros(shape, jnp.float32)
    return jax.random.uniform(key, shape, jnp.float32, -1.0, 1.0)


def similarity(query: jax.Array, keys: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(sim [B, P], normalised query [B, D], normalised keys [P, D])."""
    q, k = l2_normalize(query), l2_normalize(keys)
    return q @ k.T, q, k


def batchwise(idx: jax.Array, pool_size: int) -> jax.Array:
    """int32 [B, k]: the k prompts chosen most often in `idx` [B, k], for every example.

    The references take `torch.unique(idx, return_counts=True)` (sorted ids), pad the counts
    with zeros to the pool size and pick `topk(counts, k)`; counting over the whole pool
    (a bincount) gives the same counts at a fixed shape. Equal counts go to the lower id
    (`lax.top_k`); the order of the k chosen prompts is by count, as `topk`'s."""
    counts = jnp.zeros(pool_size, jnp.int32).at[idx.reshape(-1)].add(1)
    major = lax.top_k(counts, idx.shape[1])[1].astype(jnp.int32)
    return jnp.broadcast_to(major, idx.shape)


def select(sim: jax.Array, top_k: int, batchwise_prompt: bool) -> jax.Array:
    """int32 [B, top_k]: each example's most similar keys, or the batch's majority."""
    idx = lax.top_k(sim, top_k)[1].astype(jnp.int32)
    return batchwise(idx, sim.shape[1]) if batchwise_prompt else idx


def pull_term(query_norm: jax.Array, keys_norm: jax.Array, idx: jax.Array) -> jax.Array:
    """The references' `reduce_sim`: sum of the chosen keys' cosine to the query, over the
    batch and the k chosen, divided by the batch size."""
    return jnp.sum(keys_norm[idx] * query_norm[:, None, :]) / query_norm.shape[0]


def vit_of(model, method: str) -> ViT:
    """The configured model's linen ViT, or a one-line error."""
    if not isinstance(getattr(model, "module", None), ViT):
        raise ValueError(f"{method} needs a ViT backbone: set config.model.name='vit'")
    return model.module


def init_head(key: jax.Array, width: int, num_classes: int) -> dict:
    """timm's `nn.Linear` head under `init_weights_vit_timm`: trunc_normal(std .02), zero bias."""
    kernel = 0.02 * jax.random.truncated_normal(key, -2.0, 2.0, (width, num_classes), jnp.float32)
    return {"kernel": kernel, "bias": jnp.zeros(num_classes, jnp.float32)}


def frozen_query(module: ViT, vit_params, x: jax.Array) -> jax.Array:
    """The query: the frozen ViT's [CLS] feature after the final norm, without prompts (the
    references' `original_backbone(x)['pre_logits']`, taken under `no_grad`)."""
    return lax.stop_gradient(module.apply({"params": vit_params}, x)["features"])


def width_of(params) -> int:
    """The ViT's width, from its [CLS] token."""
    return int(params["vit"]["cls"].shape[-1])


def class_masks(num_classes: int) -> dict:
    """The class masks' "not yet": no task's classes."""
    return {"train_mask": jnp.zeros(num_classes, bool), "seen": jnp.zeros(num_classes, bool)}


def task_classes(task_data, num_classes: int) -> jax.Array:
    """bool [C]: the classes among the task's examples (padding excluded)."""
    valid = jnp.arange(task_data.y.shape[0]) < task_data.size
    slots = jnp.where(valid, task_data.y, num_classes)
    return jnp.zeros(num_classes, bool).at[slots].set(True, mode="drop")


def start_task(method, state, task_data, model) -> dict:
    """The class masks of the new task and, with `method.cache_examples`, its query cache."""
    algo = dict(state.algo)
    mask = task_classes(task_data, algo["train_mask"].shape[0])
    algo["train_mask"], algo["seen"] = mask, algo["seen"] | mask
    if method.cache_examples:
        fn = query_fn(state.params, model)
        batch = min(method.cache_examples, CACHE_BATCH)
        algo["query_cache"] = compute_features(fn, task_data, batch, method.cache_examples)
    return algo


def query_fn(params, model):
    """x -> the frozen query, through the wrapped `Model`'s `query_only` call."""
    return lambda x: model.apply(params, {}, x, train=False, query_only=True)[0]["query"]


def batch_query(method, params, state, batch, model) -> jax.Array:
    """The batch's queries: from the task's cache when on and the batch carries "index"."""
    fn = query_fn(params, model)
    if not method.cache_examples:
        return fn(batch["x"]).astype(jnp.float32)
    return cached_features(state.algo["query_cache"], batch, fn)


def masked_loss(method, outputs, batch, train_mask) -> tuple[jax.Array, dict]:
    """CE over the current task's classes (the references' `logits[:, :known] = -inf` and
    `[:, :total]`) minus `pull_coeff` times the pull term, and its metrics."""
    logits = jnp.where(train_mask, outputs["logits"], -jnp.inf)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
    pull = outputs["reduce_sim"]
    return ce - method.pull_coeff * pull, {"ce": ce, "reduce_sim": pull}


def seen_logits(logits: jax.Array, seen: jax.Array) -> jax.Array:
    """The evaluation's logits over the classes of the tasks started so far (the references'
    `[:, :total_classes]`); the rest at the most negative float."""
    return jnp.where(seen, logits, jnp.finfo(logits.dtype).min)


def check_common(method, name: str) -> None:
    """The hyper-parameters L2P and DualPrompt share, or a one-line error naming the fix."""
    for field in ("pool_size", "top_k", "prompt_length"):
        value = getattr(method, field)
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"{name} {field}={value!r} must be a positive integer")
    if method.top_k > method.pool_size:
        raise ValueError(
            f"{name} top_k={method.top_k} exceeds pool_size={method.pool_size}; lower top_k"
        )
    for field in ("prompt_init", "key_init"):
        if getattr(method, field) not in INITS:
            raise ValueError(f"{name} {field}={getattr(method, field)!r}: use 'uniform' or 'zero'")
    if not (isinstance(method.cache_examples, int) and method.cache_examples >= 0):
        raise ValueError(
            f"{name} cache_examples={method.cache_examples!r} must be an integer >= 0 (0: off)"
        )
    coeff = method.pull_coeff
    if isinstance(coeff, (int, float)) and not isinstance(coeff, bool) and coeff < 0:
        raise ValueError(f"{name} pull_coeff={coeff} must be >= 0 (0: no pull constraint)")


def head_outputs(params, features, query, q, k, idx) -> dict:
    """The wrapped model's outputs: the head's logits on `features`, and what the loss reads."""
    logits = features @ params["head"]["kernel"] + params["head"]["bias"]
    return {"logits": logits, "features": features, "query": query,
            "reduce_sim": pull_term(q, k, idx), "prompt_idx": idx}  # fmt: skip


def prompt_model(init, apply, num_classes: int) -> Model:
    """The wrapped network: the ViT frozen, the prompts, keys and head trained."""

    def trainable(params):
        return param_groups.trainable_mask(params, ("prompt/.*", "head/.*"))

    return Model(init=init, apply=apply, num_classes=num_classes, trainable=trainable)


class PromptPoolMethod(Algorithm):
    """The hooks L2P and DualPrompt share: the class masks and the query cache in the state,
    the masked loss with the pull term, predictions over the classes seen."""

    example_index = True

    def _apply_options(self, state) -> dict:
        """Extra keywords of the wrapped model's `apply` in training (DualPrompt: the task)."""
        return {}

    def init(self, params, model_state, example_batch, rng):
        algo = class_masks(params["head"]["bias"].shape[0])
        if self.cache_examples:
            width = width_of(params)
            algo["query_cache"] = jnp.zeros((self.cache_examples, width), jnp.float32)
        return algo

    def start_task(self, state, task_data, rng, model):
        return start_task(self, state, task_data, model)

    def loss(self, params, state, batch, rng, model):
        query = batch_query(self, params, state, batch, model)
        outputs, model_state = model.apply(
            params, state.model_state, batch["x"], train=True, rng=rng, query=query,
            **self._apply_options(state),
        )  # fmt: skip
        value, metrics = masked_loss(self, outputs, batch, state.algo["train_mask"])
        return value, {"model_state": model_state, "metrics": metrics, "outputs": outputs}

    def predict(self, params, model_state, algo, x, task, model):
        logits = model.apply(params, model_state, x, train=False)[0]["logits"]
        return seen_logits(logits, algo["seen"])
