"""The built-in reduced ResNet-18 against a torch ResNet-18 written here (mammoth's
`backbone/ResNet18.py`): shapes, parameter count, BatchNorm statistics, and forward/backward
parity on 32x32x3 inputs with the same weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sequax.core.models import resnet18
from sequax.engine.build import ConfigError, build_model

torch.set_num_threads(1)


# ---------------- The torch reference: mammoth's ResNet18, transcribed ------------------------


class TorchBlock(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class TorchResNet18(nn.Module):
    def __init__(self, num_classes, nf):
        super().__init__()
        self.conv1 = nn.Conv2d(3, nf, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(nf)
        in_planes, layers = nf, []
        for stage in range(4):
            blocks = []
            for block in range(2):
                planes, stride = nf * 2**stage, (2 if stage > 0 and block == 0 else 1)
                blocks.append(TorchBlock(in_planes, planes, stride))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(nf * 8, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        features = F.avg_pool2d(out, out.shape[2]).flatten(1)
        return self.linear(features), features


def torch_key(path) -> str:
    """flax path (('layer2_0', 'shortcut_conv', 'kernel')) -> torch state_dict key."""
    names = [p.key for p in path]
    module, leaf = names[:-1], names[-1]
    parts = []
    for name in module:
        if name.startswith("layer"):
            parts += name.split("_")  # layer2_0 -> layer2.0
        elif name == "shortcut_conv":
            parts += ["shortcut", "0"]
        elif name == "shortcut_bn":
            parts += ["shortcut", "1"]
        else:
            parts.append(name)
    leaf = {
        "kernel": "weight",
        "scale": "weight",
        "bias": "bias",
        "mean": "running_mean",
        "var": "running_var",
    }[leaf]
    return ".".join(parts + [leaf])


def to_torch(array, key):
    array = np.asarray(array)
    if array.ndim == 4:  # conv kernel [kh, kw, in, out] -> [out, in, kh, kw]
        array = array.transpose(3, 2, 0, 1)
    elif array.ndim == 2:  # dense kernel [in, out] -> [out, in]
        array = array.T
    return torch.from_numpy(np.array(array))  # a writable copy


def load_into_torch(net, params, model_state):
    """Copies sequax's weights and BatchNorm statistics into the torch module."""
    state = {}
    for tree in (params, model_state["batch_stats"]):
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            key = torch_key(path)
            state[key] = to_torch(leaf, key)
    missing = {k for k in net.state_dict() if not k.endswith("num_batches_tracked")} - set(state)
    assert not missing, missing
    net.load_state_dict(state, strict=False)


def nchw(x):
    return torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())


@pytest.fixture(scope="module")
def reduced():
    model = resnet18(10, nf=20)
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(8, 32, 32, 3)), jnp.float32)
    params, model_state = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    return model, params, model_state, x


def apply_fn(model, train):
    return jax.jit(lambda p, s, x: model.apply(p, s, x, train=train, rng=jax.random.PRNGKey(2)))


def reduced_resnet18_size(nf: int, num_classes: int, channels: int = 3) -> int:
    """Parameters of mammoth's ResNet-18, counted from the architecture: bias-free convs, two
    per BatchNorm channel, a 1x1 conv + BatchNorm shortcut where a stage changes shape."""
    count = channels * nf * 9 + 2 * nf  # conv1, bn1
    in_planes = nf
    for stage in range(4):
        planes = nf * 2**stage
        for _block in range(2):
            count += in_planes * planes * 9 + planes * planes * 9 + 4 * planes
            if in_planes != planes:
                count += in_planes * planes + 2 * planes
            in_planes = planes
    return count + in_planes * num_classes + num_classes


# ---------------- Tests ----------------------------------------------------------------------


def test_output_shapes_for_cifar_tinyimagenet_and_mnist_inputs(reduced):
    model, params, model_state, x = reduced
    out, _ = apply_fn(model, False)(params, model_state, x)
    assert out["logits"].shape == (8, 10) and out["features"].shape == (8, 160)
    small = resnet18(200, nf=4)
    for shape in [(2, 64, 64, 3), (2, 28, 28, 1)]:
        x_small = jax.ShapeDtypeStruct(shape, jnp.float32)
        p, s = jax.eval_shape(small.init, jax.random.PRNGKey(1), x_small)
        out, _ = jax.eval_shape(apply_fn(small, True), p, s, x_small)
        assert out["logits"].shape == (2, 200) and out["features"].shape == (2, 32)


def test_parameter_count_equals_torch_reduced_resnet18(reduced):
    _, params, model_state, _ = reduced
    net = TorchResNet18(10, nf=20)
    count = sum(a.size for a in jax.tree.leaves(params))
    assert (
        count
        == sum(p.numel() for p in net.parameters())
        == reduced_resnet18_size(20, 10)
        == 1_094_750
    )
    buffers = sum(a.size for a in jax.tree.leaves(model_state))
    assert buffers == sum(b.numel() for k, b in net.named_buffers() if "running" in k)


def test_initialisation_follows_torch_defaults(reduced):
    _, params, model_state, _ = reduced
    kernel = np.asarray(params["layer3_0"]["conv1"]["kernel"])  # fan_in = 40 * 3 * 3
    bound = 1 / np.sqrt(40 * 9)
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.95 * bound
    assert abs(kernel.std() - bound / np.sqrt(3)) < 0.05 * bound  # U(-b, b) has std b/sqrt(3)
    linear = np.asarray(params["linear"]["bias"])
    assert 0 < np.abs(linear).max() <= 1 / np.sqrt(160)
    np.testing.assert_array_equal(params["bn1"]["scale"], 1.0)
    np.testing.assert_array_equal(params["bn1"]["bias"], 0.0)
    np.testing.assert_array_equal(model_state["batch_stats"]["bn1"]["var"], 1.0)


def test_batch_stats_update_in_train_mode_only(reduced):
    model, params, model_state, x = reduced
    _, after_eval = apply_fn(model, False)(params, model_state, x)
    _, after_train = apply_fn(model, True)(params, model_state, x)
    for old, same, new in zip(
        *(jax.tree.leaves(s) for s in (model_state, after_eval, after_train))
    ):
        np.testing.assert_array_equal(old, same)
        assert not np.allclose(old, new)
    # torch's rule, by hand, on the first BatchNorm of a small batch (n = 2*6*6 = 72 values per
    # channel, so the unbiased variance is 1.4 % above the biased one).
    small = x[:2, :6, :6]
    _, after = apply_fn(model, True)(params, model_state, small)
    conv = np.asarray(
        jax.lax.conv_general_dilated(
            small,
            params["conv1"]["kernel"],
            (1, 1),
            ((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
    )
    n = conv.size // conv.shape[-1]
    stats = after["batch_stats"]["bn1"]
    np.testing.assert_allclose(
        (stats["var"] - 0.9) / 0.1, conv.var(axis=(0, 1, 2)) * n / (n - 1), rtol=1e-4
    )
    np.testing.assert_allclose(stats["mean"] / 0.1, conv.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)


def parity(model, params, model_state, x, train: bool, dtype) -> dict[str, float]:
    """Largest differences to the torch reference: logits, features, loss, and each gradient
    and BatchNorm buffer relative to the largest entry of that tensor."""
    rng = np.random.default_rng(1)
    cast = lambda a: jnp.asarray(a, dtype)  # noqa: E731
    # Non-trivial BatchNorm state and affine parameters, so that eval mode tests them too.
    model_state = jax.tree.map(lambda a: cast(a + rng.uniform(0.0, 0.5, a.shape)), model_state)
    params = jax.tree_util.tree_map_with_path(
        lambda p, a: cast(a + rng.normal(0, 0.1, a.shape) if p[-1].key in ("scale", "bias") else a),
        params,
    )
    x, y = cast(x), jnp.asarray(rng.integers(0, 10, len(x)), jnp.int32)

    def loss_fn(params):
        out, new_state = model.apply(params, model_state, x, train=train, rng=jax.random.PRNGKey(0))
        loss = optax.softmax_cross_entropy_with_integer_labels(out["logits"], y).mean()
        return loss, (out, new_state)

    (loss, (out, new_state)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)

    net = TorchResNet18(10, nf=20).to(torch.float64 if dtype == jnp.float64 else torch.float32)
    load_into_torch(net, params, model_state)
    net.train(train)
    logits, features = net(nchw(x))
    torch_loss = F.cross_entropy(logits, torch.tensor(np.asarray(y), dtype=torch.long))
    torch_loss.backward()

    def relative(a, b):
        return float(np.abs(np.asarray(a) - b).max() / max(np.abs(b).max(), 1e-30))

    torch_params, torch_buffers = dict(net.named_parameters()), dict(net.named_buffers())
    return {
        "logits": relative(out["logits"], logits.detach().numpy()),
        "features": relative(out["features"], features.detach().numpy()),
        "loss": relative(loss, torch_loss.item()),
        "grads": max(
            relative(to_torch(g, torch_key(p)), torch_params[torch_key(p)].grad.numpy())
            for p, g in jax.tree_util.tree_flatten_with_path(grads)[0]
        ),
        "batch_stats": max(
            relative(s, torch_buffers[torch_key(p)].numpy())
            for p, s in jax.tree_util.tree_flatten_with_path(new_state["batch_stats"])[0]
        ),
    }


@pytest.mark.parametrize("train", [True, False])
def test_forward_backward_parity_with_torch(reduced, train):
    # float32: within 1e-4 of each tensor's scale (measured: at most 4e-6 in train mode).
    differences = parity(*reduced, train=train, dtype=jnp.float32)
    assert max(differences.values()) < 1e-4, differences


def test_forward_backward_parity_with_torch_in_float64(reduced):
    # In float64 the two agree to rounding (measured 4e-14): any real difference, even one
    # float32's rounding would hide, fails here.
    model, params, model_state, x = reduced
    with jax.enable_x64(True):
        differences = parity(model, params, model_state, x[:4], train=True, dtype=jnp.float64)
    assert max(differences.values()) < 1e-10, differences


def test_build_model_resnet18_from_config():
    model = build_model({"name": "resnet18", "nf": 8}, 100)
    params, _ = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    assert params["linear"]["kernel"].shape == (64, 100)
    with pytest.raises(ConfigError, match="resnet18"):
        build_model({"name": "resnet50"}, 10)
    with pytest.raises(ConfigError, match="nf=0"):
        build_model({"name": "resnet18", "nf": 0}, 10)
    with pytest.raises(ConfigError, match="widths"):
        build_model({"name": "resnet18", "widths": (100,)}, 10)
