"""The offline pretraining recipe (benchmarks/vit_pretrain.py) and the pretrained table's config
(configs/vit_split_mnist.py), end to end on a few images: pretrain on Fashion-MNIST, save as a
big_vision `.npz`, reload it through the loader a config uses, and run a pretrained method
from it on Split MNIST."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import needs_shared_mnist

from benchmarks import vit_pretrain
from sequax.configs import vit_split_mnist
from sequax.engine import loop
from sequax.engine.vit_weights import read_checkpoint


@needs_shared_mnist
def test_pretrain_saves_a_big_vision_npz_that_reloads_exactly(tmp_path):
    out = str(tmp_path / "vit.npz")
    tiny = dict(width=16, depth=1, num_heads=2, mlp_dim=32, patch_size=7)
    figures = vit_pretrain.pretrain(
        out, epochs=1, train_examples=512, test_examples=500, sizes=tiny
    )
    assert figures["reload_max_abs_logit_gap"] <= 1e-5
    assert 0.0 <= figures["test_accuracy"] <= 1.0  # 4 steps: the file, not the accuracy, matters
    assert json.loads((tmp_path / "vit.npz.json").read_text())["train_examples"] == 512
    tensors = read_checkpoint(out)
    assert "Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel" in tensors
    assert tensors["embedding/kernel"].shape == (7, 7, 1, 16)

    # SimpleCIL from that checkpoint: the frozen ViT's features are the file's.
    config = vit_split_mnist.get_config("simplecil,local")
    config.model.weights = out
    config.model.update(tiny)
    config.algorithm.feature_dim = 16
    config.data.num_tasks = 2
    config.data.train_per_task = 100
    config.data.test_per_task = 50
    config.checkpoint.enabled = False
    result = loop.run(config, tmp_path / "run", verbose=False)
    assert result.class_il.shape == (2, 2) and np.isfinite(result.class_il).all()
    vit = result.state.params
    np.testing.assert_array_equal(np.asarray(vit["cls"]), tensors["cls"])
    assert result.summary["class_il"]["acc"] > 0.5  # 4 digits from Fashion-MNIST features


def test_config_names_its_methods_and_protocols():
    with pytest.raises(ValueError, match="METHOD\\[,PROTOCOL\\]\\[,local\\]"):
        vit_split_mnist.get_config("bogus")
    b0 = vit_split_mnist.get_config("ranpac,b0inc2")
    assert b0.data.options.class_order == "seed1993" and b0.model.weights
    assert not vit_split_mnist.get_config("er").model.get("weights")
