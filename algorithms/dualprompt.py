"""DualPrompt: a shared G-prompt and a pool of task E-prompts, prefix-tuning a frozen ViT.

A G(eneral)-prompt of `g_length` keys and values is prepended inside the attention of the
layers `g_layers` (prefix-tuning: the sequence length stays); an E(xpert)-prompt, one of a
pool of `pool_size` with a learned key each, inside the attention of the layers `e_layers`.
During training a task takes its own E-prompts, ids `task * top_k` to
`(task + 1) * top_k - 1` (the references' `use_prompt_mask`, on in the json: the true task id,
`state.task`); at evaluation the `top_k` whose keys are closest in cosine to the query, the
frozen ViT's [CLS] feature without prompts (`batchwise_prompt`: the batch's most chosen, for
every example). The head reads [CLS] (the references' `head_type="token"`: with
prefix-tuning the class token stays first). The loss is the cross-entropy over the
current task's classes minus `pull_coeff` times the cosine of the chosen keys to the queries,
summed over the k chosen and averaged over the batch (the pull constraint, `reduce_sim`): it
pulls the task's key to its queries. The
ViT is frozen; the G- and E-prompts, the keys and the head train.

    algorithm = DualPrompt(pool_size=10, top_k=1, cache_examples=5000)

Hyper-parameters (defaults: LAMDA-PILOT `exps/dualprompt.json`):
  g_length: the G-prompt's length (5, `g_prompt_length`).
  g_layers: the layers the G-prompt prefixes ((0, 1), `g_prompt_layer_idx`).
  prompt_length: each E-prompt's length (5, `length`).
  e_layers: the layers the E-prompts prefix ((2, 3, 4), `e_prompt_layer_idx`).
  pool_size: E-prompts in the pool (10, `size`); tasks past `pool_size // top_k` have no
    prompt of their own and train on the matched ones (as the reference's mask falls back).
  top_k: E-prompts per example (1).
  pull_coeff: weight of the pull constraint (0.1, `pull_constraint_coeff`).
  batchwise_prompt: at evaluation every example takes the batch's k most chosen E-prompts
    (True, as the json; False: each its own).
  permute_fix: False (the references' default): the selected E-prompts [layers, 2, B, ...]
    are *reshaped* to [layers, B, 2, ...] as in dualprompt-pytorch (and google-research/l2p),
    which mixes the key/value halves with the batch axis; True: transposed, so each example
    gets its prompt's key half as keys and value half as values (mammoth's
    `--use_permute_fix`, its issue #56).
  prompt_init, key_init: "uniform" U(-1, 1) (the json's) or "zero".
  cache_examples: the frozen-query cache's size (`sequax.algorithms.feature_cache`): the
    largest task's examples, or 0 (off).

The parameters are {"vit": the configured ViT's, "prompt": {"g" [len(g_layers), 2, g_length,
D], "e" [len(e_layers), 2, pool_size, prompt_length, D], "keys" [pool_size, D]}, "head"}; the
references' [..., heads, D / heads] prompt axes are stored as one axis of D (the same
memory order; the ViT's attention splits it into heads). Only "prompt" and "head" train.

Deviations from the reference:
  * `shared_prompt_pool` (on in the json): the reference copies task t-1's E-prompt into task
    t's slot when task t starts. The hooks cannot write parameters outside the optimizer, so
    each task's E-prompt starts from its own initialisation.
  * evaluation masks the logits to the classes of the tasks started so far (the reference's
    `[:, :total_classes]`); training masks them to the current task's classes, read from the
    task's labels at its start (the reference's `[known, total)` range).
  * the reference re-creates its optimizer per task (`reinit_optimizer`); the engine does the
    same with `config.optimizer.reset_each_task=True` (the default).

References:
  Wang, Zhang, Ebrahimi, Sun, Zhang, Lee, Ren, Su, Perot, Dy, Pfister, "DualPrompt:
  Complementary Prompting for Rehearsal-free Continual Learning", ECCV 2022. LAMDA-PILOT
  (sun-hailong/LAMDA-PILOT) `models/dualprompt.py`, `backbone/vit_dualprompt.py`
  (`PreT_Attention`), `backbone/prompt.py` (`EPrompt`), `exps/dualprompt.json`;
  aimagelab/mammoth `models/dualprompt.py`, `models/dualprompt_utils/prompt.py`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from sequax.algorithms import prompt_pool as pool
from sequax.core.models import Model


@dataclasses.dataclass(frozen=True)
class DualPrompt(pool.PromptPoolMethod):
    """DualPrompt (see the module docstring)."""

    needs_boundaries = "each task trains its own E-prompt, chosen by the task id"

    g_length: int = 5
    g_layers: tuple = (0, 1)
    prompt_length: int = 5
    e_layers: tuple = (2, 3, 4)
    pool_size: int = 10
    top_k: int = 1
    pull_coeff: float = 0.1
    batchwise_prompt: bool = True
    permute_fix: bool = False
    prompt_init: str = "uniform"
    key_init: str = "uniform"
    cache_examples: int = 0

    def __post_init__(self):
        pool.check_common(self, "DualPrompt")
        for field in ("g_layers", "e_layers"):
            layers = getattr(self, field)
            if not all(isinstance(i, int) and i >= 0 for i in layers):
                raise ValueError(f"DualPrompt {field}={layers!r} must be layer indices >= 0")
            object.__setattr__(self, field, tuple(layers))
        if set(self.g_layers) & set(self.e_layers) or not self.e_layers:
            raise ValueError(
                f"DualPrompt g_layers={self.g_layers} and e_layers={self.e_layers} must be "
                f"disjoint, with one E-prompt layer at least"
            )
        if not (isinstance(self.g_length, int) and self.g_length >= 0):
            raise ValueError(f"DualPrompt g_length={self.g_length!r} must be an integer >= 0")

    def wrap_model(self, model) -> Model:
        module = pool.vit_of(model, "DualPrompt")
        deepest = max((*self.g_layers, *self.e_layers))
        if deepest >= module.depth:
            raise ValueError(
                f"DualPrompt prompts layer {deepest}, but the ViT has {module.depth} layers; "
                f"lower g_layers/e_layers or deepen config.model"
            )
        num_classes, use_g = model.num_classes, bool(self.g_layers and self.g_length)

        def init(key, x):
            vit_key, g_key, e_key, key_key, head_key = jax.random.split(key, 5)
            vit_params, model_state = model.init(vit_key, x)
            width = int(vit_params["cls"].shape[-1])
            e_shape = (len(self.e_layers), 2, self.pool_size, self.prompt_length, width)
            prompt = {
                "e": pool.init_array(e_key, e_shape, self.prompt_init),
                "keys": pool.init_array(key_key, (self.pool_size, width), self.key_init),
            }
            if use_g:
                g_shape = (len(self.g_layers), 2, self.g_length, width)
                prompt["g"] = pool.init_array(g_key, g_shape, self.prompt_init)
            params = {
                "vit": vit_params,
                "prompt": prompt,
                "head": pool.init_head(head_key, width, num_classes),
            }
            return params, model_state

        def apply(
            params, model_state, x, *, train, rng=None, query=None, task=None, query_only=False
        ):
            del train, rng  # no dropout
            if query is None:
                query = pool.frozen_query(module, params["vit"], x)
            if query_only:
                return {"query": query}, model_state
            batch = x.shape[0]
            sim, q, k = pool.similarity(query, params["prompt"]["keys"])
            idx = pool.select(sim, self.top_k, self.batchwise_prompt)
            if task is not None:  # training: the task's own prompts while the pool has them
                own = task * self.top_k + jnp.arange(self.top_k, dtype=jnp.int32)
                fits = (task + 1) * self.top_k <= self.pool_size
                idx = jnp.where(fits, jnp.broadcast_to(own, idx.shape), idx)
            e = params["prompt"]["e"][:, :, idx]  # [layers, 2, B, k, L, D]
            if self.permute_fix:
                e = jnp.swapaxes(e, 1, 2)
            e = e.reshape(len(self.e_layers), batch, 2, -1, e.shape[-1])
            prefixes = {layer: (e[i, :, 0], e[i, :, 1]) for i, layer in enumerate(self.e_layers)}
            if use_g:
                g = params["prompt"]["g"]
                for i, layer in enumerate(self.g_layers):
                    key_value = (jnp.broadcast_to(g[i, j], (batch, *g.shape[2:])) for j in (0, 1))
                    prefixes[layer] = tuple(key_value)
            out = module.apply({"params": params["vit"]}, x, prefixes=prefixes)
            features = out["features"]
            outputs = pool.head_outputs(params, features, query, q, k, idx)
            return outputs, model_state

        return pool.prompt_model(init, apply, num_classes)

    def _apply_options(self, state) -> dict:
        return {"task": state.task}  # the task's own E-prompts in training
