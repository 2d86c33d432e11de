"""RanPAC (`sequax.algorithms.ranpac`): the contract with a tiny ViT, the statistics and the
ridge head against numpy, and a float64 PyTorch transcription of LAMDA-PILOT's RanPAC
(sun-hailong/LAMDA-PILOT `models/ranpac.py`: `setup_RP`, `replace_fc`,
`optimise_ridge_parameter`; `utils/inc_net.py`: `SimpleVitNet.forward`; `backbone/linears.py`:
`CosineLinear`) over the same ViT in torch (`vit_reference.TorchViT`) and the same W_rand.

The reference's randomness is replaced by the draws the JAX code made: `torch.randn`'s W_rand
by the state's projection, and its shuffled loader's order by the fit mask (`fit_mask`: the
fitted examples first, then the validation ones).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_simplecil import (
    CosineLinear,
    pixel_model,
    predict,
    run_tasks,
    separated_images,
    task_of,
)
from vit_reference import TorchViT

from sequax.algorithms.ranpac import NO_CLASS, RanPAC, fit_mask, ridge_grid
from sequax.core.vit import vit

CLASSES, WIDTH, HEADS = 10, 16, 2


# The contract on a tiny ViT: tests/algorithms/test_contract.py ("ranpac").


def test_hyperparameters_are_checked():
    for name in ("num_classes", "feature_dim", "batch_size"):
        for value in (0, 2.0, True):
            with pytest.raises(ValueError, match=name):
                RanPAC(**{name: value})
    with pytest.raises(ValueError, match="projection_dim"):
        RanPAC(projection_dim=-1)
    with pytest.raises(ValueError, match="min_ridge_exponent"):
        RanPAC(min_ridge_exponent=3, max_ridge_exponent=2)
    with pytest.raises(ValueError, match="cosine_head"):
        RanPAC(cosine_head=1)
    assert RanPAC().needs_boundaries
    np.testing.assert_array_equal(ridge_grid(-8, 8), 10.0 ** np.arange(-8, 9))


def test_the_fit_split_is_the_references_eighty_percent():
    for n in range(1, 400):
        assert (4 * n) // 5 == int(n * 0.8)
    mask = np.asarray(fit_mask(jax.random.PRNGKey(0), jnp.int32(23), 32))
    assert mask.sum() == 18 and not mask[23:].any()


# ---------------- Statistics and the ridge head, against numpy ---------------------------------


def numpy_ridge(h, y, fit, ridges, classes):
    """`optimise_ridge_parameter` in float64 numpy over the fitted and validation rows."""
    onehot = np.eye(classes)[y]
    g, q = h[fit].T @ h[fit], h[fit].T @ onehot[fit]
    losses = []
    for ridge in ridges:
        wo = np.linalg.solve(g + ridge * np.eye(len(g)), q)
        losses.append(np.mean((h[~fit] @ wo - onehot[~fit]) ** 2))
    return ridges[int(np.argmin(losses))]


@pytest.mark.parametrize("cosine_head", [True, False])
def test_statistics_and_head_match_numpy(cosine_head):
    """Pixel features (D = 4), M = 6, two tasks (the first padded, chunks of 5): G and Q are
    sums of outer products over both tasks, the ridge is the numpy transcription's, W_o is
    numpy's solve, and the logits are the cosine (or plain) head over the classes seen."""
    rng = np.random.default_rng(0)
    sizes, classes = (23, 17), ([0, 1], [2, 1])
    xs = [rng.integers(0, 256, (n, 2, 2, 1), dtype=np.uint8) for n in sizes]
    ys = [rng.choice(c, n) for c, n in zip(classes, sizes)]
    tasks = [task_of(x, y, 24) for x, y in zip(xs, ys)]
    algorithm = RanPAC(4, feature_dim=4, projection_dim=6, cosine_head=cosine_head, batch_size=5)
    model, states = run_tasks(algorithm, pixel_model(4), tasks, seed=3)
    w_rand = np.asarray(states[0].algo.projection, np.float64)
    g, q = np.zeros((6, 6)), np.zeros((6, 4))
    for t, (x, y, state) in enumerate(zip(xs, ys, states)):
        h = np.maximum(x.reshape(len(x), -1) / 255.0 @ w_rand, 0.0)
        g, q = g + h.T @ h, q + h.T @ np.eye(4)[y]
        np.testing.assert_allclose(state.algo.gram, g, rtol=1e-5)
        np.testing.assert_allclose(state.algo.targets, q, rtol=1e-5, atol=1e-6)
        fit = np.asarray(fit_mask(jax.random.PRNGKey(3 + t), jnp.int32(len(y)), 24))[: len(y)]
        ridge = numpy_ridge(h, y, fit, ridge_grid(-8, 8), 4)
        assert float(state.algo.ridge) == pytest.approx(ridge, rel=1e-6)
        wo = np.linalg.solve(g + ridge * np.eye(6), q)
        np.testing.assert_allclose(state.algo.readout, wo, rtol=1e-4, atol=1e-4 * abs(wo).max())
        logits = predict(algorithm, model, state, jnp.asarray(x, jnp.float32) / 255.0)
        seen = np.isin(np.arange(4), np.concatenate(ys[: t + 1]))
        if cosine_head:
            unit = lambda a: a / np.linalg.norm(a, axis=0, keepdims=True)  # noqa: E731
            expected = (h / np.linalg.norm(h, axis=1, keepdims=True)) @ unit(wo[:, seen])
        else:
            expected = h @ wo[:, seen]
        np.testing.assert_allclose(logits[:, seen], expected, rtol=1e-4, atol=1e-5)
        assert (logits[:, ~seen] == np.float32(NO_CLASS)).all()
    np.testing.assert_array_equal(states[1].algo.counts, np.bincount(np.concatenate(ys), None, 4))


def test_two_tasks_class_incremental():
    """Well-separated features (class c lights pixel c, M = 32): after both tasks every class
    of both tasks is predicted right over all four classes."""
    rng = np.random.default_rng(1)

    images = functools.partial(separated_images, rng)

    labels = [rng.integers(0, 2, 30), rng.integers(2, 4, 25)]
    tasks = [task_of(images(y), y, 30) for y in labels]
    algorithm = RanPAC(4, feature_dim=4, projection_dim=32)
    model, (first, second) = run_tasks(algorithm, pixel_model(4), tasks)
    test_y = np.array([0, 1, 2, 3] * 3)
    test_x = jnp.asarray(images(test_y), jnp.float32) / 255.0
    assert (predict(algorithm, model, first, test_x)[:, 2:] == np.float32(NO_CLASS)).all()
    np.testing.assert_array_equal(predict(algorithm, model, second, test_x).argmax(-1), test_y)


# ---------------- Against PILOT's RanPAC in float64 torch --------------------------------------


def target2onehot(targets, n_classes):  # utils/toolkit.py
    onehot = torch.zeros(targets.shape[0], n_classes).double()
    onehot.scatter_(dim=1, index=targets.long().view(-1, 1), value=1.0)
    return onehot


class PilotRanPAC:
    """`SimpleVitNet` (with W_rand) + `Learner.setup_RP`, `replace_fc` and
    `optimise_ridge_parameter` of models/ranpac.py, in float64, over a given backbone and
    W_rand; `data` arrives in the loader's order (fitted examples first)."""

    def __init__(self, backbone, w_rand, nb_classes):
        self.backbone, self.args = backbone, {"M": w_rand.shape[1], "nb_classes": nb_classes}
        self.w_rand_given, self.fc, self.W_rand, self._known_classes = w_rand, None, None, 0

    def update_fc(self, nb_classes):  # SimpleVitNet.update_fc (RP_dim set after setup_RP)
        feature_dim = (
            self.args["M"] if self.W_rand is not None else self.backbone.norm.weight.shape[0]
        )
        fc = CosineLinear(feature_dim, nb_classes).double()
        if self.fc is not None:
            nb_output = self.fc.out_features
            weight = self.fc.weight.data.clone()
            fc.sigma.data = self.fc.sigma.data
            weight = torch.cat([weight, torch.zeros(nb_classes - nb_output, feature_dim).double()])
            fc.weight = torch.nn.Parameter(weight)
        self.fc = fc

    def setup_RP(self):
        M = self.args["M"]
        self.fc.weight = torch.nn.Parameter(torch.Tensor(self.fc.out_features, M).double())
        self.W_rand = torch.as_tensor(self.w_rand_given)  # torch.randn(fc.in_features, M)
        self.Q = torch.zeros(M, self.args["nb_classes"]).double()
        self.G = torch.zeros(M, M).double()

    def replace_fc(self, data, label):
        with torch.no_grad():
            embedding_list = self.backbone(data)["features"]
        label_list = torch.as_tensor(label)
        Y = target2onehot(label_list, self.args["nb_classes"])
        Features_h = F.relu(embedding_list @ self.W_rand)
        self.Q = self.Q + Features_h.T @ Y
        self.G = self.G + Features_h.T @ Features_h
        ridge = self.optimise_ridge_parameter(Features_h, Y)
        Wo = torch.linalg.solve(self.G + ridge * torch.eye(self.G.size(dim=0)).double(), self.Q).T
        self.fc.weight.data = Wo[0 : self.fc.weight.shape[0], :]
        self.ridge, self.Wo = ridge, Wo

    def optimise_ridge_parameter(self, Features, Y):
        ridges = 10.0 ** np.arange(-8, 9)
        num_val_samples = int(Features.shape[0] * 0.8)
        losses = []
        Q_val = Features[0:num_val_samples, :].T @ Y[0:num_val_samples, :]
        G_val = Features[0:num_val_samples, :].T @ Features[0:num_val_samples, :]
        for ridge in ridges:
            Wo = torch.linalg.solve(G_val + ridge * torch.eye(G_val.size(dim=0)).double(), Q_val).T
            Y_train_pred = Features[num_val_samples::, :] @ Wo.T
            losses.append(F.mse_loss(Y_train_pred, Y[num_val_samples::, :]))
        return ridges[np.argmin(np.array(losses))]

    def incremental_train(self, data, label, task_size, cur_task):
        self._total_classes = self._known_classes + task_size
        self.update_fc(self._total_classes)
        if cur_task == 0:
            self.setup_RP()
        self.replace_fc(data, label)
        self._known_classes = self._total_classes

    def logits(self, data):  # SimpleVitNet.forward
        with torch.no_grad():
            x = self.backbone(data)["features"]
            return self.fc(F.relu(x @ self.W_rand))["logits"]


def test_matches_pilot_ranpac_in_torch():
    """Two tasks of 2 classes over a tiny ViT (8x8 images), M = 12: the chosen ridge, W_o and
    the test logits over the classes seen agree to 1e-5 after each task."""
    rng = np.random.default_rng(2)
    sizes, classes = (40, 35), ([0, 1], [2, 3])
    xs = [rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8) for n in sizes]
    ys = [rng.choice(c, n) for c, n in zip(classes, sizes)]
    tasks = [task_of(x, y, 40) for x, y in zip(xs, ys)]
    algorithm = RanPAC(CLASSES, feature_dim=WIDTH, projection_dim=12, batch_size=16)
    model = vit(CLASSES, width=WIDTH, depth=2, num_heads=HEADS, mlp_dim=32, patch_size=4)
    model, states = run_tasks(algorithm, model, tasks, seed=5)
    w_rand = np.asarray(states[0].algo.projection, np.float64)
    reference = PilotRanPAC(TorchViT.from_flax(states[0].params, HEADS), w_rand, CLASSES)
    test_x = rng.random((6, 8, 8, 1)).astype(np.float32)
    for t, (x, y, state) in enumerate(zip(xs, ys, states)):
        fit = np.asarray(fit_mask(jax.random.PRNGKey(5 + t), jnp.int32(len(y)), 40))[: len(y)]
        order = np.concatenate([np.flatnonzero(fit), np.flatnonzero(~fit)])  # the loader's
        reference.incremental_train(x[order].astype(np.float64) / 255.0, y[order], 2, t)
        assert float(state.algo.ridge) == pytest.approx(reference.ridge, rel=1e-6)
        wo = reference.Wo.numpy().T
        np.testing.assert_allclose(state.algo.readout, wo, atol=1e-5 * max(1, abs(wo).max()))
        seen = reference._total_classes
        logits = predict(algorithm, model, state, jnp.asarray(test_x))
        expected = reference.logits(test_x.astype(np.float64)).numpy()
        np.testing.assert_allclose(logits[:, :seen], expected, atol=1e-5)
        assert (logits[:, seen:] == np.float32(NO_CLASS)).all()
