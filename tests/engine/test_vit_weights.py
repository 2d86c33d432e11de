"""Pretrained ViT weights (`sequax.engine.vit_weights`), on tiny checkpoints written here.

* vit_jax's old `.npz` layout (pre-linen numbering, `posembed_input` over [CLS] and the
  patches) against an independent NumPy transcription of the vit_jax/big_vision forward;
* big_vision's current layout through `save_npz` (exact round trip);
* a timm-layout torch module (tests/vit_reference.py's `TorchViT`, erf GELU) saved as a torch
  `state_dict` and as `.safetensors`, and the same module through the torch bridge;
* each failure (shapes, missing or unknown tensors, missing or corrupt files) as one line.
"""

from __future__ import annotations

import copy
import json

import jax
import numpy as np
import pytest
import scipy.ndimage
import torch
from vit_reference import TorchViT

from sequax.core.vit import vit
from sequax.engine.build import build_model
from sequax.engine.errors import ConfigError
from sequax.engine.vit_weights import _fix, read_checkpoint, save_npz

WIDTH, DEPTH, HEADS, MLP, PATCH, CHANNELS, CLASSES = 16, 2, 2, 32, 4, 3, 5


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).uniform(size=(3, 8, 8, CHANNELS)).astype(np.float32)


def build(weights, classes=CLASSES, **config):
    return build_model({"name": "vit", "weights": str(weights), **config}, classes)


def run(model, x, key=0):
    params, state = model.init(jax.random.PRNGKey(key), x)
    outputs, _ = model.apply(params, state, x, train=False)
    return params, {k: np.asarray(v) for k, v in outputs.items()}


# ---------------- vit_jax's old layout against NumPy --------------------------------------------


def vit_jax_tensors(seed=0, side=8) -> dict[str, np.ndarray]:
    """Random weights under the original vit_jax names."""
    rng = np.random.default_rng(seed)
    r = lambda *shape: rng.normal(0, 0.3, shape).astype(np.float32)  # noqa: E731
    hd, n = WIDTH // HEADS, (side // PATCH) ** 2
    d = {
        "embedding/kernel": r(PATCH, PATCH, CHANNELS, WIDTH),
        "embedding/bias": r(WIDTH),
        "cls": r(1, 1, WIDTH),
        "Transformer/posembed_input/pos_embedding": r(1, 1 + n, WIDTH),
        "Transformer/encoder_norm/scale": 1 + r(WIDTH),
        "Transformer/encoder_norm/bias": r(WIDTH),
        "head/kernel": r(WIDTH, CLASSES),
        "head/bias": r(CLASSES),
    }
    for i in range(DEPTH):
        b = f"Transformer/encoderblock_{i}/"
        for norm in ("LayerNorm_0", "LayerNorm_2"):
            d[f"{b}{norm}/scale"], d[f"{b}{norm}/bias"] = 1 + r(WIDTH), r(WIDTH)
        for part in ("query", "key", "value"):
            a = f"{b}MultiHeadDotProductAttention_1/{part}/"
            d[a + "kernel"], d[a + "bias"] = r(WIDTH, HEADS, hd), r(HEADS, hd)
        a = f"{b}MultiHeadDotProductAttention_1/out/"
        d[a + "kernel"], d[a + "bias"] = r(HEADS, hd, WIDTH), r(WIDTH)
        m = f"{b}MlpBlock_3/"
        d[m + "Dense_0/kernel"], d[m + "Dense_0/bias"] = r(WIDTH, MLP), r(MLP)
        d[m + "Dense_1/kernel"], d[m + "Dense_1/bias"] = r(MLP, WIDTH), r(WIDTH)
    return d


def numpy_vit_jax(d, x):
    """vit_jax's forward (float64): (x - 0.5) / 0.5, patches, [CLS] prepended, then the
    position embedding added to all 1 + N tokens, pre-norm blocks (LayerNorm eps 1e-6, tanh
    GELU), the final norm and the head on [CLS]. Returns (logits, features)."""
    g = lambda name: d[name].astype(np.float64)  # noqa: E731
    x = (x.astype(np.float64) - 0.5) / 0.5
    b, h, w, c = x.shape
    patches = x.reshape(b, h // PATCH, PATCH, w // PATCH, PATCH, c).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(b, -1, PATCH, PATCH, c)
    t = np.einsum("bnijc,ijcd->bnd", patches, g("embedding/kernel")) + g("embedding/bias")
    t = np.concatenate([np.broadcast_to(g("cls"), (b, 1, WIDTH)), t], axis=1)
    t = t + g("Transformer/posembed_input/pos_embedding")

    def norm(z, name):
        mu = z.mean(-1, keepdims=True)
        var = ((z - mu) ** 2).mean(-1, keepdims=True)
        return (z - mu) / np.sqrt(var + 1e-6) * g(name + "/scale") + g(name + "/bias")

    def gelu(z):
        return 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z**3)))

    for i in range(DEPTH):
        blk = f"Transformer/encoderblock_{i}/"
        a = blk + "MultiHeadDotProductAttention_1/"
        y = norm(t, blk + "LayerNorm_0")
        q, k, v = (
            np.einsum("bld,dhe->blhe", y, g(a + p + "/kernel")) + g(a + p + "/bias")
            for p in ("query", "key", "value")
        )
        logits = np.einsum("bqhe,bkhe->bhqk", q, k) / np.sqrt(WIDTH // HEADS)
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        o = np.einsum("bhqk,bkhe->bqhe", weights, v)
        t = t + np.einsum("bqhe,hed->bqd", o, g(a + "out/kernel")) + g(a + "out/bias")
        m = blk + "MlpBlock_3/"
        y = gelu(norm(t, blk + "LayerNorm_2") @ g(m + "Dense_0/kernel") + g(m + "Dense_0/bias"))
        t = t + y @ g(m + "Dense_1/kernel") + g(m + "Dense_1/bias")
    features = norm(t, "Transformer/encoder_norm")[:, 0]
    return features @ g("head/kernel") + g("head/bias"), features


@pytest.fixture(scope="module")
def vit_jax_file(tmp_path_factory):
    tensors = vit_jax_tensors()
    path = tmp_path_factory.mktemp("vit_jax") / "augreg_tiny.npz"
    np.savez(path, **tensors)
    return path, tensors


def test_vit_jax_npz_matches_a_numpy_forward(vit_jax_file, images):
    path, tensors = vit_jax_file
    model = build(path, load_head=True)  # every size read from the file
    module = model.module
    assert (module.width, module.depth, module.num_heads, module.mlp_dim) == (16, 2, 2, 32)
    assert module.patch_size == PATCH and module.approximate_gelu  # tanh, as vit_jax
    _, outputs = run(model, images)
    logits, features = numpy_vit_jax(tensors, images)
    np.testing.assert_allclose(outputs["logits"], logits, atol=1e-5, rtol=0)
    np.testing.assert_allclose(outputs["features"], features, atol=1e-5, rtol=0)

    fresh = build(path)  # the default: a new head, the same backbone
    params, outputs = run(fresh, images)
    np.testing.assert_allclose(outputs["features"], features, atol=1e-5, rtol=0)
    assert not np.allclose(np.asarray(params["head"]["bias"]), tensors["head/bias"])


def test_position_embeddings_resampled_to_the_datas_grid(vit_jax_file):
    """12 px images (a 3x3 grid) from an 8 px checkpoint (2x2): linear interpolation as
    big_vision's `resample_posemb` (scipy.ndimage.zoom, order 1), after the [CLS] fold."""
    path, tensors = vit_jax_file
    params, _ = build(path).init(jax.random.PRNGKey(0), np.zeros((1, 12, 12, CHANNELS), np.float32))
    pe = tensors["Transformer/posembed_input/pos_embedding"]
    np.testing.assert_allclose(params["cls"], tensors["cls"] + pe[:, :1], rtol=1e-6)
    grid = scipy.ndimage.zoom(pe[0, 1:].reshape(2, 2, WIDTH), (1.5, 1.5, 1), order=1)
    np.testing.assert_allclose(params["pos_embedding"][0], grid.reshape(9, WIDTH), atol=1e-6)


def test_resized_inputs_take_the_grid_the_vit_sees(vit_jax_file):
    """4 px images resized to 12 px (`resize`) into the 8 px checkpoint: the position
    embeddings resampled to the 3x3 grid of the resized images, as 12 px inputs get them."""
    path, _ = vit_jax_file
    x = np.zeros((1, 4, 4, CHANNELS), np.float32)
    resized, _ = build(path, resize=12).init(jax.random.PRNGKey(0), x)
    direct, _ = build(path).init(jax.random.PRNGKey(0), np.zeros((1, 12, 12, CHANNELS)))
    np.testing.assert_array_equal(resized["pos_embedding"], direct["pos_embedding"])
    assert resized["pos_embedding"].shape == (1, 9, WIDTH)


# ---------------- big_vision's layout through save_npz ------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory, images):
    sizes = dict(width=WIDTH, depth=DEPTH, num_heads=HEADS, mlp_dim=MLP, patch_size=PATCH)
    params, _ = vit(CLASSES, **sizes).init(jax.random.PRNGKey(3), images)
    path = tmp_path_factory.mktemp("big_vision") / "ours.npz"
    save_npz(params, path)
    return path, params


def test_save_npz_round_trips_exactly(saved, images):
    path, params = saved
    model = build(path, load_head=True, trainable="head")
    loaded, _ = model.init(jax.random.PRNGKey(9), images)
    assert jax.tree.structure(loaded) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    mask = model.trainable(loaded)
    assert mask["head"]["kernel"] and not mask["embedding"]["kernel"]


def test_big_vision_scan_layout(saved, images, tmp_path):
    """big_vision's scan=True files stack the blocks on a leading axis ("encoderblock")."""
    path, params = saved
    tensors, stacked = dict(np.load(path)), {}
    for name in [n for n in tensors if "/encoderblock_" in n]:
        block, _, rest = name.removeprefix("Transformer/encoderblock_").partition("/")
        stacked.setdefault(rest, {})[int(block)] = tensors.pop(name)
    for rest, blocks in stacked.items():
        tensors[f"Transformer/encoderblock/{rest}"] = np.stack([blocks[i] for i in range(DEPTH)])
    np.savez(tmp_path / "scan.npz", **tensors)
    loaded, _ = build(tmp_path / "scan.npz").init(jax.random.PRNGKey(0), images)
    block = params["Transformer"]["encoderblock_1"]["MlpBlock_0"]["Dense_1"]["kernel"]
    loaded_block = loaded["Transformer"]["encoderblock_1"]["MlpBlock_0"]["Dense_1"]["kernel"]
    np.testing.assert_array_equal(np.asarray(loaded_block), np.asarray(block))


# ---------------- timm's layout: torch state_dict and safetensors -------------------------------

SAFETENSORS_NAMES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def write_safetensors(path, tensors: dict[str, np.ndarray]) -> None:
    """The safetensors format: u64 little-endian header length, JSON header, the data."""
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, value in tensors.items():
        value = np.ascontiguousarray(value)
        header[name] = {
            "dtype": SAFETENSORS_NAMES[value.dtype.name],
            "shape": list(value.shape),
            "data_offsets": [offset, offset + value.nbytes],
        }
        blobs.append(value.tobytes())
        offset += value.nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + b"".join(blobs))


@pytest.fixture(scope="module")
def timm_net():
    torch.manual_seed(0)
    net = TorchViT(
        CLASSES, image_size=8, patch_size=PATCH, width=WIDTH, depth=DEPTH, num_heads=HEADS,
        mlp_dim=MLP, in_chans=CHANNELS,
    ).double()  # fmt: skip
    with torch.no_grad():  # no zero [CLS], unit norms or zero biases hiding a transpose
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return net.eval()


@pytest.mark.parametrize("kind", ["pth", "safetensors"])
def test_timm_checkpoint_matches_the_torch_module(timm_net, images, tmp_path, kind):
    path = tmp_path / f"timm.{kind}"
    state = timm_net.state_dict()
    if kind == "pth":
        torch.save(state, path)
    else:
        write_safetensors(path, {k: v.numpy().astype(np.float32) for k, v in state.items()})
    model = build(path, num_heads=HEADS, load_head=True)
    assert not model.module.approximate_gelu  # timm's erf GELU by default
    _, outputs = run(model, images)
    with torch.no_grad():
        expected = timm_net(torch.from_numpy(images).double())
    np.testing.assert_allclose(outputs["logits"], expected["logits"].numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(outputs["features"], expected["features"].numpy(), atol=1e-5, rtol=0)


def test_file_formats_and_dtypes(tmp_path, timm_net):
    rng = np.random.default_rng(0)
    values = {
        "a": rng.normal(size=(2, 3)).astype(np.float16),
        "b": rng.normal(size=(4,)).astype(jax.numpy.bfloat16),
        "c": rng.normal(size=(1, 2, 2)),
    }
    write_safetensors(tmp_path / "mixed.safetensors", values)
    read = read_checkpoint(tmp_path / "mixed.safetensors")
    for name, value in values.items():
        assert read[name].dtype == value.dtype
        np.testing.assert_array_equal(read[name].astype(np.float64), value.astype(np.float64))
    state = timm_net.state_dict()
    torch.save(
        {"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "w.pt"
    )
    read = read_checkpoint(tmp_path / "w.pt")  # wrapped, DataParallel prefixes dropped
    assert set(read) == set(state)
    np.testing.assert_array_equal(read["cls_token"], state["cls_token"].numpy())


def test_any_torch_vit_through_the_torch_bridge(timm_net, images):
    from sequax.engine.torch_bridge import from_torch

    class Logits(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):  # NHWC, as TorchViT takes it
            return self.net(x)["logits"]

    net = Logits(copy.deepcopy(timm_net).float())
    model = from_torch(net, images, num_classes=CLASSES, input_layout="NCHW")
    params, state = model.init(jax.random.PRNGKey(0), images)
    outputs, _ = jax.jit(lambda p, x: model.apply(p, state, x, train=False))(params, images)
    with torch.no_grad():
        expected = net(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(np.asarray(outputs["logits"]), expected, atol=1e-5, rtol=0)


# ---------------- Failures: one line each ------------------------------------------------------


def _rewritten(tmp_path, saved_path, change):
    tensors = dict(np.load(saved_path))
    change(tensors)
    path = tmp_path / "changed.npz"
    np.savez(path, **tensors)
    return path


def test_failures_are_one_line(tmp_path, saved, timm_net):
    path, _ = saved

    def refused(weights, *names, **config):
        with pytest.raises(ConfigError) as info:
            build(weights, **config)
        message = str(info.value)
        assert "\n" not in message, message
        for name in names:
            assert name in message, message
        return message

    dense = "Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel"
    message = refused(path, dense, "(16, 32)", "(16, 64)", mlp_dim=64)
    assert "mlp_dim=32" in message
    refused(path, "embedding/kernel", "(4, 4, 3, 16)", "(16, 16, 3, 384)", variant="S/16")
    assert _fix(dict(width=384, depth=12, mlp_dim=1536, patch_size=16)) == (
        "choose variant 'S/16' or its sizes"
    )
    refused(path, "head/kernel", "(16, 5)", "(16, 7)", "load_head=False", classes=7, load_head=True)

    gone = "Transformer/encoderblock_1/LayerNorm_1/bias"
    refused(_rewritten(tmp_path, path, lambda t: t.pop(gone)), gone, "missing")
    extra = _rewritten(tmp_path, path, lambda t: t.update({"pre_logits/kernel": t["cls"]}))
    refused(extra, "pre_logits/kernel", "no such layer")

    state = {k: v.numpy() for k, v in timm_net.state_dict().items()}
    write_safetensors(tmp_path / "t.safetensors", {**state, "fc_norm.weight": state["norm.weight"]})
    refused(tmp_path / "t.safetensors", "fc_norm.weight", "global_pool", num_heads=HEADS)
    write_safetensors(tmp_path / "t.safetensors", state)
    refused(tmp_path / "t.safetensors", "num_heads")  # not readable from a fused qkv
    refused(
        tmp_path / "t.safetensors", "blocks.0.mlp.fc1.weight", "mlp_dim=32", num_heads=2, mlp_dim=8
    )
    with pytest.raises(ConfigError, match=r"embedding/kernel .* set channels=3") as info:
        build(path).init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 1), np.float32))  # grey
    assert "\n" not in str(info.value)

    refused(tmp_path / "nowhere.npz", "nowhere.npz", "does not exist")
    (tmp_path / "cut.npz").write_bytes(path.read_bytes()[:300])
    refused(tmp_path / "cut.npz", "cut.npz", "cannot be read")
    (tmp_path / "bad.safetensors").write_bytes((10**9).to_bytes(8, "little") + b"{}")
    refused(tmp_path / "bad.safetensors", "bad.safetensors", "header length")
    (tmp_path / "junk.safetensors").write_bytes((3).to_bytes(8, "little") + b"{x}")
    refused(tmp_path / "junk.safetensors", "junk.safetensors", "cannot be read")
    torch.save(timm_net.state_dict(), tmp_path / "cut.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "cut.pth").read_bytes()[:500])
    refused(tmp_path / "cut.pth", "cut.pth", "cannot be read")
    np.savez(tmp_path / "other.npz", **{"conv1/weight": np.zeros(3)})
    refused(tmp_path / "other.npz", "other.npz", "unknown ViT layout", "conv1/weight")
