"""Class-incremental Split MNIST on a small ViT: the pretrained-model methods from the offline
Fashion-MNIST checkpoint, beside the same ViT trained from scratch (issue 19, item 5).

    python -m benchmarks.vit_pretrain                      # writes runs/vit_pretrain/fmnist_vit.npz
    python -m sequax.launch.train --config=configs/vit_split_mnist.py:l2p --workdir=runs/vit_l2p
    python -m sequax.launch.train --config=configs/vit_split_mnist.py:ranpac,b0inc2 ...
    python -m benchmarks.vit_table --update_docs           # every method, both protocols

The argument is METHOD[,PROTOCOL][,local] (none: "naive"): METHOD one of `METHODS`;
PROTOCOL "split" (the 5 tasks of digits 0-1, 2-3, ... in order; the default) or "b0inc2"
(PyCIL's B0-Inc2, five tasks of two classes in the seed-1993 class order); "local" a short
run on 1,000 images per
task. Every run: the 60,000 MNIST training images, one epoch per task, batch 32, the ViT of
`benchmarks.vit_pretrain` (width 64, depth 4, 4 heads, MLP 128, 4x4 patches).

The pretrained runs load `config.model.weights` (the Fashion-MNIST checkpoint; override it
with --config.model.weights=PATH) and train what their method trains: nothing but statistics
(SimpleCIL, RanPAC), prompts, keys and the head (L2P, DualPrompt, CODA-Prompt), or everything
with a 100x slower backbone (SLCA). The baselines ("naive", "er") start from a random
initialisation of the same ViT and train all of it. The ViT has 4 layers, so DualPrompt's
E-prompts sit at layers 2-3 (the paper's 2-4 of 12) and CODA-Prompt prefixes layers 0-3.
"""

from __future__ import annotations

import ml_collections

from sequax.engine.schema import base_config

WEIGHTS = "runs/vit_pretrain/fmnist_vit.npz"
SIZES = dict(width=64, depth=4, num_heads=4, mlp_dim=128, patch_size=4)
CACHE = 13_000  # the frozen-feature cache must hold the largest task (6,742 + 5,923 at most)

# method -> (algorithm hyper-parameters, optimizer, pretrained)
METHODS = {
    "simplecil": (dict(feature_dim=64), dict(name="sgd", lr=1e-12), True),
    "ranpac": (dict(feature_dim=64, projection_dim=2000), dict(name="sgd", lr=1e-12), True),
    "l2p": (dict(cache_examples=CACHE), dict(name="adam", lr=2e-3), True),
    "dualprompt": (dict(e_layers=(2, 3), cache_examples=CACHE), dict(name="adam", lr=2e-3), True),
    "coda_prompt": (
        dict(num_tasks=5, pool_size=20, prompt_layers=(0, 1, 2, 3), cache_examples=CACHE),
        dict(name="adam", lr=1e-3),
        True,
    ),
    "slca": (dict(), dict(name="momentum", lr=0.01, momentum=0.9, weight_decay=5e-4), True),
    "naive": (dict(), dict(name="adam", lr=1e-3), False),
    "er": (dict(capacity=500, replay_batch=32), dict(name="adam", lr=1e-3), False),
}
PROTOCOLS = ("split", "b0inc2")


def make(method: str, protocol: str = "split", local: bool = False) -> ml_collections.ConfigDict:
    """The config of one table cell."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; one of {', '.join(METHODS)}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; one of {', '.join(PROTOCOLS)}")
    hyper, optimizer, pretrained = METHODS[method]
    config = base_config()
    config.data.source = "mnist"
    config.data.scenario = "split"
    config.data.num_tasks = 5
    options = dict(classes_per_task=2)
    if protocol == "b0inc2":
        options = dict(base=0, increment=2, class_order="seed1993")
    config.data.options = ml_collections.ConfigDict(options)
    config.algorithm = ml_collections.ConfigDict(dict(name=method, **hyper))
    model = dict(name="vit", **SIZES)
    if pretrained:
        model["weights"] = WEIGHTS
    config.model = ml_collections.ConfigDict(model)
    for key, value in optimizer.items():
        config.optimizer[key] = value
    config.training.batch_size = 32
    config.training.epochs = 1
    if local:
        config.data.train_per_task = 1000
        config.data.test_per_task = 500
        if "cache_examples" in hyper:
            config.algorithm.cache_examples = 1000
    return config


def get_config(arg: str | None = None):
    """`arg`: METHOD[,PROTOCOL][,local]; none: naive from scratch (needs no checkpoint)."""
    parts = [p for p in (arg or "").split(",") if p]
    local = "local" in parts
    parts = [p for p in parts if p != "local"] or ["naive"]
    if parts[0] not in METHODS or len(parts) > 2:
        raise ValueError(
            f"unknown config argument {arg!r}; give METHOD[,PROTOCOL][,local] with METHOD one "
            f"of {', '.join(METHODS)} and PROTOCOL one of {', '.join(PROTOCOLS)}"
        )
    return make(parts[0], parts[1] if len(parts) > 1 else "split", local)
