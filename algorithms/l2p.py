"""L2P: Learning to Prompt, a pool of prompts chosen by key-query matching on a frozen ViT.

A pool of `pool_size` prompts (each `prompt_length` tokens) with one learned key each. An
example's query is the frozen pretrained ViT's [CLS] feature without prompts; the `top_k`
prompts whose keys are closest in cosine (`batchwise_prompt`: the k chosen most often over
the batch, for every example) are prepended to the ViT's input, right after [CLS]
(prompt-tuning at layer 0), and the head reads the mean of those prompt tokens' outputs
(the references' `head_type="prompt"`). The loss is the cross-entropy over the current
task's classes minus `pull_coeff` times the cosine of the chosen keys to the queries, summed
over the k chosen and averaged over the batch (the pull constraint, `reduce_sim`). The ViT is
frozen; the prompts, keys and head train.

    algorithm = L2P(pool_size=10, prompt_length=5, top_k=5, cache_examples=5000)

Hyper-parameters (defaults: LAMDA-PILOT `exps/l2p.json`):
  pool_size: prompts in the pool (10, the json's `size`).
  prompt_length: tokens per prompt (5, `length`).
  top_k: prompts chosen per example (5).
  pull_coeff: weight of the pull constraint (0.1, `pull_constraint_coeff`).
  batchwise_prompt: every example of a batch takes the batch's k most chosen prompts, at
    training and at evaluation (True, as the json; False: each its own).
  prompt_init, key_init: "uniform" U(-1, 1) (the json's) or "zero".
  cache_examples: the frozen-query cache's size (`sequax.algorithms.feature_cache`): the
    largest task's examples, or 0 (off: the query is computed every step).

The parameters are {"vit": the configured ViT's (pretrained weights as loaded), "prompt":
{"prompts" [P, L, D], "keys" [P, D]}, "head": {"kernel" [D, C], "bias" [C]}}; only "prompt"
and "head" train (`Model.trainable`). The head is a new `nn.Linear` initialised as timm's
(truncated normal, std 0.02; zero bias); the ViT's own head, if any, is unused.

Deviations from the reference:
  * position embeddings: the reference's pos_embed covers the prompt positions, and loading
    pretrained weights expands the [CLS] position over them (`resize_pos_embed` in
    LAMDA-PILOT `backbone/vit_l2p.py`), so each prompt token gets the [CLS] position added.
    Our ViT (big_vision's) has no [CLS] position (a timm [CLS] position is folded into `cls`
    when converting), so prompt tokens get none: the reference with a zero [CLS] position,
    and otherwise the same model up to a constant shift of the prompts' initialisation.
  * evaluation masks the logits to the classes of the tasks started so far (the reference's
    `[:, :total_classes]`); training masks them to the current task's classes, read from the
    task's labels at its start (the reference's `[known, total)` range).
  * the reference re-creates its optimizer per task (`reinit_optimizer`); the engine does the
    same with `config.optimizer.reset_each_task=True` (the default).
  * `shared_prompt_pool`/`shared_prompt_key` (off in the json) and `use_prompt_mask` (off)
    are not implemented.

References:
  Wang, Zhang, Lee, Zhang, Sun, Ren, Su, Perot, Dy, Pfister, "Learning to Prompt for
  Continual Learning", CVPR 2022. LAMDA-PILOT (sun-hailong/LAMDA-PILOT) `models/l2p.py`,
  `backbone/vit_l2p.py`, `backbone/prompt.py` (from JH-LEE-KR/l2p-pytorch), `exps/l2p.json`;
  aimagelab/mammoth `models/l2p.py`, `models/l2p_utils/`.
"""

from __future__ import annotations

import dataclasses

import jax

from sequax.algorithms import prompt_pool as pool
from sequax.core.models import Model


@dataclasses.dataclass(frozen=True)
class L2P(pool.PromptPoolMethod):
    """Learning to Prompt (see the module docstring)."""

    needs_boundaries = "the training mask is the classes of the task, read when it starts"

    pool_size: int = 10
    prompt_length: int = 5
    top_k: int = 5
    pull_coeff: float = 0.1
    batchwise_prompt: bool = True
    prompt_init: str = "uniform"
    key_init: str = "uniform"
    cache_examples: int = 0

    def __post_init__(self):
        pool.check_common(self, "L2P")

    def wrap_model(self, model) -> Model:
        module = pool.vit_of(model, "L2P")
        num_classes, length = model.num_classes, self.top_k * self.prompt_length

        def init(key, x):
            vit_key, prompt_key, key_key, head_key = jax.random.split(key, 4)
            vit_params, model_state = model.init(vit_key, x)
            width = int(vit_params["cls"].shape[-1])
            shape = (self.pool_size, self.prompt_length, width)
            params = {
                "vit": vit_params,
                "prompt": {
                    "prompts": pool.init_array(prompt_key, shape, self.prompt_init),
                    "keys": pool.init_array(key_key, (self.pool_size, width), self.key_init),
                },
                "head": pool.init_head(head_key, width, num_classes),
            }
            return params, model_state

        def apply(params, model_state, x, *, train, rng=None, query=None, query_only=False):
            del train, rng  # no dropout
            if query is None:
                query = pool.frozen_query(module, params["vit"], x)
            if query_only:
                return {"query": query}, model_state
            sim, q, k = pool.similarity(query, params["prompt"]["keys"])
            idx = pool.select(sim, self.top_k, self.batchwise_prompt)
            prompts = params["prompt"]["prompts"][idx]  # [B, k, L, D]
            prompts = prompts.reshape(x.shape[0], length, prompts.shape[-1])
            tokens = module.apply({"params": params["vit"]}, x, prompts={0: prompts})["tokens"]
            features = tokens[:, 1 : 1 + length].mean(axis=1)
            outputs = pool.head_outputs(params, features, query, q, k, idx)
            return outputs, model_state

        return pool.prompt_model(init, apply, num_classes)
