"""SimpleCIL (`sequax.algorithms.simplecil`): the contract with a tiny ViT, the prototypes as
class means, and a float64 PyTorch transcription of LAMDA-PILOT's SimpleCIL
(sun-hailong/LAMDA-PILOT `models/simplecil.py`: `replace_fc`; `utils/inc_net.py`:
`SimpleVitNet.update_fc`, `forward`; `backbone/linears.py`: `CosineLinear`) over the same
ViT in torch (`vit_reference.TorchViT`), so the whole pipeline is compared.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from vit_reference import TorchViT

from sequax.algorithms.simplecil import NO_PROTOTYPE, SimpleCIL
from sequax.core.models import Model
from sequax.core.state import create_state
from sequax.core.task_data import task_arrays
from sequax.core.vit import vit

CLASSES, WIDTH, HEADS = 10, 16, 2


def tiny_vit():
    return vit(CLASSES, width=WIDTH, depth=2, num_heads=HEADS, mlp_dim=32, patch_size=4)


def pixel_model(num_classes: int = CLASSES) -> Model:
    """A parameter-free model whose "features" are the flattened pixels."""

    def init(key, x):
        return {"unused": jnp.zeros(1)}, {}

    def apply(params, model_state, x, *, train, rng=None):
        features = x.reshape(x.shape[0], -1)
        return {"logits": jnp.zeros((x.shape[0], num_classes)), "features": features}, model_state

    return Model(init=init, apply=apply, num_classes=num_classes)


def task_of(images: np.ndarray, labels, capacity: int):
    return task_arrays(images, np.asarray(labels), np.zeros(len(labels)), capacity)


def run_tasks(algorithm, model, tasks, seed=0):
    """The state after `end_task` on each task in turn (the algorithm's wrapped model)."""
    model = algorithm.wrap_model(model)
    x0 = tasks[0].x[:1].astype(jnp.float32) / 255.0
    example = {"x": x0, "y": tasks[0].y[:1], "task": tasks[0].task[:1]}
    state = create_state(model, algorithm, optax.sgd(0.1), example, seed=0)
    end = jax.jit(lambda s, d, k: algorithm.end_task(s, d, k, model))
    states = []
    for t, data in enumerate(tasks):
        state = state._replace(task=jnp.int32(t))
        state = state._replace(algo=end(state, data, jax.random.PRNGKey(seed + t)))
        states.append(state)
    return model, states


def predict(algorithm, model, state, x):
    fn = jax.jit(lambda p, a, x: algorithm.predict(p, {}, a, x, jnp.zeros(len(x), int), model))
    return np.asarray(fn(state.params, state.algo, x))


# ---------------- The contract, hyper-parameters, the frozen model -----------------------------


# The contract on a tiny ViT: tests/algorithms/test_contract.py ("simplecil").


def test_hyperparameters_are_checked():
    for name in ("num_classes", "feature_dim", "batch_size"):
        for value in (0, 2.0, True):
            with pytest.raises(ValueError, match=name):
                SimpleCIL(**{name: value})
    assert SimpleCIL().needs_boundaries


def test_nothing_trains_and_the_loss_runs_no_model():
    algorithm, model = SimpleCIL(CLASSES, feature_dim=WIDTH), tiny_vit()
    wrapped = algorithm.wrap_model(model)
    x = jnp.zeros((2, 8, 8, 1))
    params = wrapped.init(jax.random.PRNGKey(0), x)[0]
    assert not any(jax.tree.leaves(wrapped.trainable(params)))
    state = create_state(wrapped, algorithm, optax.sgd(0.1), {"x": x, "y": jnp.zeros(2, int)}, 0)
    batch = {"x": x, "y": jnp.zeros(2, jnp.int32)}
    jaxpr = jax.make_jaxpr(lambda p: algorithm.loss(p, state, batch, None, wrapped))(params)
    assert not any(e.primitive.name == "dot_general" for e in jaxpr.jaxpr.eqns)
    value, aux = algorithm.loss(params, state, batch, None, wrapped)
    assert float(value) == 0.0 and aux["model_state"] == {}


# ---------------- Prototypes: class means, running over tasks ----------------------------------


def test_prototypes_are_class_means():
    """Task 0 holds classes 0, 1 (and 3 padding slots); task 1 classes 1, 2: class 1's
    prototype becomes the mean over both tasks' examples of it. Predictions are cosines."""
    rng = np.random.default_rng(0)
    x0, x1 = (rng.integers(0, 256, (n, 2, 2, 1), dtype=np.uint8) for n in (5, 8))
    y0, y1 = [0, 1, 0, 1, 1], [1, 2, 2, 1, 2, 2, 1, 2]
    tasks = [task_of(x0, y0, 8), task_of(x1, y1, 8)]
    algorithm = SimpleCIL(4, feature_dim=4, batch_size=3)  # 3 batches, the last one padded
    model, (first, second) = run_tasks(algorithm, pixel_model(4), tasks)
    f0, f1 = (x.reshape(len(x), -1) / 255.0 for x in (x0, x1))
    y0, y1 = np.asarray(y0), np.asarray(y1)
    means = np.zeros((4, 4))
    for c in (0, 1):
        means[c] = f0[y0 == c].mean(0)
    np.testing.assert_allclose(first.algo.prototypes, means, rtol=1e-6)
    np.testing.assert_array_equal(first.algo.counts, [2, 3, 0, 0])
    means[1] = np.concatenate([f0[y0 == 1], f1[y1 == 1]]).mean(0)
    means[2] = f1[y1 == 2].mean(0)
    np.testing.assert_allclose(second.algo.prototypes, means, rtol=1e-6)
    np.testing.assert_array_equal(second.algo.counts, [2, 6, 5, 0])
    logits = predict(algorithm, model, second, jnp.asarray(f1.reshape(-1, 2, 2, 1), jnp.float32))
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(logits[:, :3], unit(f1) @ unit(means[:3]).T, rtol=1e-5)
    assert (logits[:, 3] == np.float32(NO_PROTOTYPE)).all()


def separated_images(rng, labels) -> np.ndarray:
    """2x2 grey images where class c lights pixel c over a dim background."""
    x = rng.integers(0, 40, (len(labels), 2, 2, 1))
    x.reshape(len(labels), 4)[np.arange(len(labels)), labels] = 255
    return x.astype(np.uint8)


def test_two_tasks_class_incremental():
    """Well-separated features (class c lights pixel c): after both tasks every class of both
    tasks is predicted right over all four classes; after the first, the new ones score
    NO_PROTOTYPE."""
    rng = np.random.default_rng(1)

    images = functools.partial(separated_images, rng)

    labels = [rng.integers(0, 2, 12), rng.integers(2, 4, 10)]
    tasks = [task_of(images(y), y, 12) for y in labels]
    algorithm = SimpleCIL(4, feature_dim=4)
    model, (first, second) = run_tasks(algorithm, pixel_model(4), tasks)
    test_y = np.array([0, 1, 2, 3] * 3)
    test_x = jnp.asarray(images(test_y), jnp.float32) / 255.0
    assert (predict(algorithm, model, first, test_x)[:, 2:] == np.float32(NO_PROTOTYPE)).all()
    np.testing.assert_array_equal(predict(algorithm, model, second, test_x).argmax(-1), test_y)


# ---------------- Against PILOT's SimpleCIL in float64 torch -----------------------------------


class CosineLinear(nn.Module):  # backbone/linears.py (nb_proxy 1, to_reduce False)
    def __init__(self, in_features, out_features, sigma=True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.Tensor(self.out_features, in_features))
        self.sigma = nn.Parameter(torch.Tensor(1)) if sigma else None
        self.reset_parameters()

    def reset_parameters(self):
        stdv = 1.0 / np.sqrt(self.weight.size(1))
        self.weight.data.uniform_(-stdv, stdv)
        if self.sigma is not None:
            self.sigma.data.fill_(1)

    def forward(self, input):
        out = F.linear(F.normalize(input, p=2, dim=1), F.normalize(self.weight, p=2, dim=1))
        if self.sigma is not None:
            out = self.sigma * out
        return {"logits": out}


class PilotSimpleCIL:
    """`SimpleVitNet` + `Learner.replace_fc` of models/simplecil.py over a given backbone."""

    def __init__(self, backbone):
        self.backbone, self.fc, self._known_classes = backbone, None, 0

    def update_fc(self, nb_classes):  # SimpleVitNet.update_fc
        feature_dim = self.backbone.norm.weight.shape[0]
        fc = CosineLinear(feature_dim, nb_classes).double()
        if self.fc is not None:
            nb_output = self.fc.out_features
            weight = self.fc.weight.data.clone()
            fc.sigma.data = self.fc.sigma.data
            weight = torch.cat([weight, torch.zeros(nb_classes - nb_output, feature_dim).double()])
            fc.weight = nn.Parameter(weight)
        self.fc = fc

    def incremental_train(self, data, label, task_size):
        self._total_classes = self._known_classes + task_size
        self.update_fc(self._total_classes)
        with torch.no_grad():  # replace_fc
            embedding_list = self.backbone(data)["features"]
            label_list = torch.as_tensor(label)
            for class_index in np.unique(label):
                data_index = (label_list == class_index).nonzero().squeeze(-1)
                embedding = embedding_list[data_index]
                proto = embedding.mean(0)
                self.fc.weight.data[class_index] = proto
        self._known_classes = self._total_classes  # after_task

    def logits(self, data):
        with torch.no_grad():
            return self.fc(self.backbone(data)["features"])["logits"]


def test_matches_pilot_simplecil_in_torch():
    """Two tasks of 2 classes over a tiny ViT (8x8 images): the prototypes (the fc rows) and
    the test logits over the classes seen agree to 1e-5 after each task."""
    rng = np.random.default_rng(2)
    sizes, classes = (13, 9), ([0, 1], [2, 3])
    xs = [rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8) for n in sizes]
    ys = [rng.choice(c, n) for c, n in zip(classes, sizes)]
    tasks = [task_of(x, y, 16) for x, y in zip(xs, ys)]
    algorithm = SimpleCIL(CLASSES, feature_dim=WIDTH, batch_size=8)
    model, states = run_tasks(algorithm, tiny_vit(), tasks)
    reference = PilotSimpleCIL(TorchViT.from_flax(states[0].params, num_heads=HEADS))
    test_x = rng.random((6, 8, 8, 1)).astype(np.float32)
    for x, y, state in zip(xs, ys, states):
        reference.incremental_train(x.astype(np.float64) / 255.0, y, 2)
        seen = reference._total_classes
        np.testing.assert_allclose(
            state.algo.prototypes[:seen], reference.fc.weight.detach().numpy(), atol=1e-5
        )
        logits = predict(algorithm, model, state, jnp.asarray(test_x))
        expected = reference.logits(test_x.astype(np.float64)).numpy()
        np.testing.assert_allclose(logits[:, :seen], expected, atol=1e-5)
        assert (logits[:, seen:] == np.float32(NO_PROTOTYPE)).all()
