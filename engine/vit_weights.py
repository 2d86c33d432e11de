"""Pretrained ViT weights for `sequax.core.vit`: big_vision/vit_jax `.npz`, timm `state_dict`s.

    model = pretrained_vit(100, "B_16-i21k-300ep.npz")         # sizes read from the file
    model = build_model({"name": "vit", "weights": "vit_b16.pth", "num_heads": 12}, 100)
    params, model_state = model.init(key, x)   # the file's weights, a fresh head

Formats (`read_checkpoint`): a `.npz` of "/"-joined names (big_vision, vit_jax, `save_npz`);
`.safetensors` (read here with NumPy: the `safetensors` package is not needed); a torch
`state_dict` (`.pth`, `.pt`, `.bin`, also under a "model" or "state_dict" key), read with
`torch.load(..., weights_only=True)` (torch is imported only for these).

Layouts (`to_vit_params`), told apart by their names:

* big_vision's current one: the names of `sequax.core.vit` (google-research/big_vision
  `big_vision/models/vit.py`);
* vit_jax's older one (the AugReg ImageNet-21k ViT-B/16 that L2P, DualPrompt and
  CODA-Prompt start from): pre-linen numbering ("MultiHeadDotProductAttention_1",
  "LayerNorm_2", "MlpBlock_3") and `Transformer/posembed_input/pos_embedding` over [CLS] and
  the patches, fixed as big_vision's `fix_old_checkpoints` does (the [CLS] row is folded into
  `cls`, since [CLS] + its position is all the network ever sees of them);
* timm's (`patch_embed.proj`, `cls_token`, `pos_embed`, `blocks.i.{norm1, attn.qkv,
  attn.proj, norm2, mlp.fc1, mlp.fc2}`, `norm`, `head`): a fixed table of transposes and the
  split of the fused qkv, which needs the number of heads (`num_heads` or a variant).

Every tensor is checked against the network's shapes when the model is built (before anything
compiles): the first that does not fit, is missing, or belongs to a layer this ViT lacks
("pre_logits", timm's "fc_norm") is one `ConfigError` line with the fix. The position
embeddings are resampled linearly to the data's grid (big_vision's `resample_posemb`). GELU:
tanh for big_vision/vit_jax files, timm's exact erf for its, unless `approximate_gelu` is set.
"""

from __future__ import annotations

import json
import math
import os
import re
import zipfile
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from sequax.core.models import Model
from sequax.core.vit import VARIANTS, vit
from sequax.engine.errors import ConfigError

TORCH_SUFFIXES = (".pth", ".pt", ".bin")
FORMATS = "a .npz (big_vision/vit_jax), .safetensors or torch state_dict (.pth, .pt, .bin)"

# Tensors of layers this ViT does not have, by a part of their name.
EXTRA_LAYERS = {
    "pre_logits": "the pre-logits layer (representation_size) of the original ViT paper",
    "fc_norm": "timm's norm of average-pooled features (global_pool='avg')",
    "MAPHead": "a MAP (attention-pooling) head", "probe": "a MAP (attention-pooling) head",
    "ls1": "LayerScale (DeiT-3, CaiT)", "ls2": "LayerScale (DeiT-3, CaiT)",
    "q_norm": "QK-norm", "k_norm": "QK-norm", "norm_pre": "a norm before the encoder (CLIP)",
    "reg_token": "register tokens", "dist_token": "DeiT's distillation token",
    "head_dist": "DeiT's distillation head",
}  # fmt: skip

# safetensors dtype names -> NumPy dtypes (bfloat16 from ml_dtypes, which jax ships).
SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": jnp.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}  # fmt: skip


def _first_line(error: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # torch's bold
    text = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# ---------------- Reading files ----------------------------------------------------------------


def read_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a weights file by name, as NumPy arrays (one ConfigError line if the file
    is missing, unreadable or of an unknown kind)."""
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        raise ConfigError(
            f"weights file {path} does not exist; give the path of {FORMATS} (nothing is "
            f"downloaded: fetch it first)"
        )
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".npz":
        return _read_npz(path)
    if suffix == ".safetensors":
        return _read_safetensors(path)
    if suffix in TORCH_SUFFIXES:
        return _read_torch(path)
    raise ConfigError(f"weights file {path}: unknown kind {suffix!r}; give {FORMATS}")


def _corrupt(path: str, error: BaseException | str, fix: str = "download or write it again"):
    cause = error if isinstance(error, str) else _first_line(error)
    return ConfigError(f"weights file {path} cannot be read ({cause}); {fix}")


def _read_npz(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: np.asarray(archive[name]) for name in archive.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
        raise _corrupt(path, error) from None


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    """The safetensors format: an 8-byte little-endian header length, a JSON header
    {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then the data
    (offsets relative to its start)."""
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as file:
            head = file.read(8)
            if len(head) < 8:
                raise _corrupt(path, "shorter than the 8-byte header length")
            length = int.from_bytes(head, "little")
            if length > size - 8:
                raise _corrupt(path, f"header length {length} exceeds the file's {size} bytes")
            header = json.loads(file.read(length).decode("utf-8"))
            data = file.read()
    except ConfigError:
        raise
    except (OSError, ValueError) as error:  # UnicodeDecodeError, JSONDecodeError
        raise _corrupt(path, error) from None
    if not isinstance(header, dict):
        raise _corrupt(path, "its header is not a JSON object")
    tensors = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = np.dtype(SAFETENSORS_DTYPES[spec["dtype"]])
            shape = tuple(int(n) for n in spec["shape"])
            begin, end = (int(n) for n in spec["data_offsets"])
        except (KeyError, TypeError, ValueError) as error:
            raise _corrupt(path, f"bad header entry for {name} ({_first_line(error)})") from None
        count = math.prod(shape)
        if not 0 <= begin <= end <= len(data) or end - begin != count * dtype.itemsize:
            raise _corrupt(
                path, f"{name}'s bytes {begin}..{end} do not hold {shape} {spec['dtype']} in "
                f"the {len(data)}-byte data"
            )  # fmt: skip
        tensors[name] = np.frombuffer(data, dtype, count, begin).reshape(shape).copy()
    return tensors


def _read_torch(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ConfigError(
            f"weights file {path} is a torch file and torch is not installed; install torch "
            f"or convert the file to .npz or .safetensors"
        ) from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - zip, pickle and runtime errors alike
        raise _corrupt(
            path, error, "it must be a torch.save'd state_dict (save module.state_dict(), not "
            "the module), written whole"
        ) from None  # fmt: skip
    if isinstance(loaded, Mapping):
        for wrapper in ("model", "state_dict"):
            if isinstance(loaded.get(wrapper), Mapping):
                loaded = loaded[wrapper]
                break
    if not isinstance(loaded, Mapping) or not loaded:
        raise ConfigError(
            f"weights file {path} holds a {type(loaded).__name__}, not a state_dict; save "
            f"module.state_dict()"
        )
    tensors = {}
    for name, value in loaded.items():
        if not isinstance(value, torch.Tensor):
            continue
        name = name[len("module.") :] if name.startswith("module.") else name  # DataParallel
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            value = value.float()
        tensors[name] = value.numpy().copy()
    return tensors


def save_npz(params, path: str | os.PathLike) -> None:
    """Writes ViT params as a big_vision `.npz` ("/"-joined names), atomically."""
    path = os.fspath(path)
    flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
    arrays = {}
    for name, value in flat.items():
        value = np.asarray(value)
        if value.dtype.kind == "V" or value.dtype == jnp.bfloat16:  # not in the .npy format
            value = value.astype(np.float32)
        arrays[name] = value
    temporary = f"{path}.tmp{os.getpid()}"
    with open(temporary, "wb") as file:
        np.savez(file, **arrays)
    os.replace(temporary, path)


# ---------------- Layouts ----------------------------------------------------------------------


def detect_layout(tensors: Mapping[str, Any]) -> str:
    """ "big_vision" (also vit_jax's older names) or "timm", from the tensor names."""
    names = list(tensors)
    if any(n.startswith("Transformer/") or n.startswith("embedding/") for n in names):
        return "big_vision"
    if any(n.startswith(("blocks.", "patch_embed.")) for n in names):
        return "timm"
    shown = ", ".join(names[:3]) or "no tensors"
    hint = ""
    if any("embeddings.patch_embeddings" in n for n in names):
        hint = " (a Hugging Face transformers ViT: convert it to timm's names first)"
    raise ConfigError(
        f"unknown ViT layout{hint}: the file holds {shown}{', ...' if len(names) > 3 else ''}; "
        f"expected big_vision/vit_jax names ('Transformer/encoderblock_0/...') or timm's "
        f"('blocks.0.attn.qkv.weight')"
    )


def _renumber_pre_linen(tree: dict) -> dict:
    """flax's `convert_pre_linen`: at every level, siblings named `prefix_<n>` are renumbered
    0, 1, ... per prefix in the order of n (vit_jax's LayerNorm_2 becomes LayerNorm_1)."""
    counts: dict[str, int] = {}
    renamed = {}

    def order(name):
        match = re.fullmatch(r"(.*)_(\d+)", name)
        return (match.group(1), int(match.group(2))) if match else (name, -1)

    for name in sorted(tree, key=order):
        value = tree[name]
        match = re.fullmatch(r"(.*)_(\d+)", name)
        if match:
            prefix = match.group(1)
            name = f"{prefix}_{counts.get(prefix, 0)}"
            counts[prefix] = counts.get(prefix, 0) + 1
        renamed[name] = _renumber_pre_linen(value) if isinstance(value, dict) else value
    return renamed


def _fold_cls(params: dict[str, np.ndarray]) -> None:
    """An old position embedding over [CLS] and a square grid: its first row joins `cls`."""
    pe = params.get("pos_embedding")
    if pe is None or pe.ndim != 3:
        return
    n = pe.shape[1]
    if math.isqrt(n) ** 2 + 1 == n:
        params["pos_embedding"] = pe[:, 1:]
        if "cls" in params:
            params["cls"] = params["cls"] + pe[:, :1]


def _from_big_vision(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    tree = _renumber_pre_linen(traverse_util.unflatten_dict(dict(tensors), sep="/"))
    encoder = tree.get("Transformer", {})
    if "encoderblock" in encoder:  # big_vision's scan=True layout: blocks stacked on axis 0
        stacked = traverse_util.flatten_dict(encoder.pop("encoderblock"), sep="/")
        depth = min(v.shape[0] for v in stacked.values())
        for i in range(depth):
            encoder[f"encoderblock_{i}"] = traverse_util.unflatten_dict(
                {k: v[i] for k, v in stacked.items()}, sep="/"
            )
    if "posembed_input" in encoder:  # the original ViT paper's
        tree["pos_embedding"] = encoder.pop("posembed_input")["pos_embedding"]
    if "pos_embedding" in encoder:  # before 2022
        tree["pos_embedding"] = encoder.pop("pos_embedding")
    params = traverse_util.flatten_dict(tree, sep="/")
    _fold_cls(params)
    return params


_TIMM = {  # timm's name -> (ours, conversion)
    "patch_embed.proj.weight": ("embedding/kernel", lambda v: v.transpose(2, 3, 1, 0)),
    "patch_embed.proj.bias": ("embedding/bias", None),
    "cls_token": ("cls", None),
    "pos_embed": ("pos_embedding", None),
    "norm.weight": ("Transformer/encoder_norm/scale", None),
    "norm.bias": ("Transformer/encoder_norm/bias", None),
    "head.weight": ("head/kernel", np.transpose),
    "head.bias": ("head/bias", None),
}


def _from_timm(tensors: Mapping[str, np.ndarray], num_heads: int, origin: dict) -> dict:
    """timm's names and layouts -> ours; unknown names are kept (and refused by the check)."""
    params: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        value, converted = np.asarray(value), {}
        block = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
        if name in _TIMM:
            ours, conversion = _TIMM[name]
            converted[ours] = conversion(value) if conversion else value
        elif block and block.group(2) in _TIMM_BLOCK:
            prefix = f"Transformer/encoderblock_{block.group(1)}/"
            for ours, v in _TIMM_BLOCK[block.group(2)](value, num_heads).items():
                converted[prefix + ours] = v
        else:
            converted[name] = value
        params.update(converted)
        origin.update(dict.fromkeys(converted, name))
    _fold_cls(params)
    return params


_ATTENTION = "MultiHeadDotProductAttention_0"


def _qkv_weight(w, h):  # [3D, D] (out, in) -> query/key/value kernels [D, H, D/H]
    d = w.shape[1]
    return {
        f"{_ATTENTION}/{part}/kernel": w[i * d : (i + 1) * d].T.reshape(d, h, -1)
        for i, part in enumerate(("query", "key", "value"))
    }


def _qkv_bias(b, h):  # [3D] -> [H, D/H] each
    d = b.shape[0] // 3
    return {
        f"{_ATTENTION}/{part}/bias": b[i * d : (i + 1) * d].reshape(h, -1)
        for i, part in enumerate(("query", "key", "value"))
    }


_TIMM_BLOCK = {
    "norm1.weight": lambda v, h: {"LayerNorm_0/scale": v},
    "norm1.bias": lambda v, h: {"LayerNorm_0/bias": v},
    "norm2.weight": lambda v, h: {"LayerNorm_1/scale": v},
    "norm2.bias": lambda v, h: {"LayerNorm_1/bias": v},
    "attn.qkv.weight": _qkv_weight,
    "attn.qkv.bias": _qkv_bias,
    "attn.proj.weight": lambda v, h: {f"{_ATTENTION}/out/kernel": v.T.reshape(h, -1, v.shape[0])},
    "attn.proj.bias": lambda v, h: {f"{_ATTENTION}/out/bias": v},
    "mlp.fc1.weight": lambda v, h: {"MlpBlock_0/Dense_0/kernel": v.T},
    "mlp.fc1.bias": lambda v, h: {"MlpBlock_0/Dense_0/bias": v},
    "mlp.fc2.weight": lambda v, h: {"MlpBlock_0/Dense_1/kernel": v.T},
    "mlp.fc2.bias": lambda v, h: {"MlpBlock_0/Dense_1/bias": v},
}


def to_vit_params(
    tensors: Mapping[str, np.ndarray],
    layout: str,
    num_heads: int | None = None,
    origin: dict[str, str] | None = None,
) -> dict[str, np.ndarray]:
    """A file's tensors under `sequax.core.vit`'s "/"-joined names (timm's need `num_heads`);
    `origin` collects our name -> the file's for timm's."""
    if layout == "timm":
        if not num_heads:
            raise ConfigError(
                "the number of heads cannot be read from timm's fused qkv; set "
                "config.model.num_heads (12 for ViT-B, 6 for S, 3 for Ti) or a variant"
            )
        width = np.shape(tensors.get("patch_embed.proj.weight", (0,)))[0]
        if width and width % num_heads:
            raise ConfigError(
                f"num_heads={num_heads} does not divide the file's width {width}; set the "
                f"model's num_heads"
            )
        return _from_timm(tensors, num_heads, {} if origin is None else origin)
    return _from_big_vision(tensors)


def file_sizes(params: Mapping[str, np.ndarray]) -> dict[str, int]:
    """The sizes a converted file implies (those it holds): width, patch_size, depth, mlp_dim,
    num_heads, channels, grid (the side of its square grid of positions)."""
    sizes = {}
    kernel = params.get("embedding/kernel")
    if kernel is not None and kernel.ndim == 4:
        sizes.update(patch_size=kernel.shape[0], channels=kernel.shape[2], width=kernel.shape[3])
    blocks = {
        int(m.group(1)) for n in params if (m := re.match(r"Transformer/encoderblock_(\d+)/", n))
    }
    if blocks:
        sizes["depth"] = max(blocks) + 1
    block = "Transformer/encoderblock_0/"
    dense = params.get(block + "MlpBlock_0/Dense_0/kernel")
    if dense is not None and dense.ndim == 2:
        sizes["mlp_dim"] = dense.shape[1]
    query = params.get(block + f"{_ATTENTION}/query/kernel")
    if query is not None and query.ndim == 3:
        sizes["num_heads"] = query.shape[1]
    pe = params.get("pos_embedding")
    if pe is not None and pe.ndim == 3:
        sizes["grid"] = math.isqrt(pe.shape[1])
    return sizes


def _fix(sizes: Mapping[str, int], module=None) -> str:
    """How to build the ViT a file holds: its variant, else the sizes `module` gets wrong."""
    keys = ("width", "depth", "mlp_dim", "num_heads")
    for name, variant in VARIANTS.items():
        if all(sizes.get(k, variant[k]) == variant[k] for k in keys) and "width" in sizes:
            return f"choose variant '{name}/{sizes.get('patch_size', 16)}' or its sizes"
    known = [k for k in (*keys, "patch_size") if k in sizes]
    wrong = [k for k in known if module is not None and getattr(module, k) != sizes[k]]
    given = ", ".join(f"{k}={sizes[k]}" for k in wrong or known)
    return f"set {given} (or leave variant and sizes unset to take the file's)"


# ---------------- Position embeddings ----------------------------------------------------------


def _linear_resize(a: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Linear interpolation along `axis` with the end points kept (scipy.ndimage.zoom, order=1)."""
    old = a.shape[axis]
    if old == size:
        return a
    coords = np.arange(size) * ((old - 1) / (size - 1)) if size > 1 else np.zeros(1)
    low = np.clip(np.floor(coords).astype(int), 0, old - 1)
    high = np.minimum(low + 1, old - 1)
    shape = [1] * a.ndim
    shape[axis] = size
    frac = (coords - low).reshape(shape)
    return np.take(a, low, axis) * (1 - frac) + np.take(a, high, axis) * frac


def resample_posemb(posemb: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """A [1, N, D] embedding of a square grid resampled to `grid` = (rows, columns) positions by
    linear interpolation, as big_vision's `resample_posemb` (for a square target)."""
    posemb = np.asarray(posemb)
    side = math.isqrt(posemb.shape[1])
    values = posemb.reshape(side, side, -1).astype(np.float64)
    values = _linear_resize(_linear_resize(values, grid[0], 0), grid[1], 1)
    return values.reshape(1, grid[0] * grid[1], -1).astype(posemb.dtype)


# ---------------- The model --------------------------------------------------------------------


def _extra(name: str) -> str | None:
    """What an `EXTRA_LAYERS` tensor is, or None."""
    found = (w for p, w in EXTRA_LAYERS.items() if re.search(rf"(^|[./]){p}([./_]|$)", name))
    return next(found, None)


_RANKS = {
    **{name: i for i, name in enumerate(("embedding", "pos_embedding", "cls", "Transformer"))},
    **{name: i for i, name in enumerate(("LayerNorm_0", _ATTENTION, "LayerNorm_1", "MlpBlock_0"))},
    **{name: i for i, name in enumerate(("query", "key", "value", "out"))},
    "kernel": 0, "scale": 0, "bias": 1, "encoder_norm": 1 << 30, "head": 4,
}  # fmt: skip


def _forward_order(name: str) -> tuple[int, ...]:
    """Sorts "/"-joined names in the order the forward meets them (blocks by number)."""
    parts = name.split("/")
    return tuple(
        _RANKS.get(p, int(p.rpartition("_")[2] or 0) if p[-1:].isdigit() else 99) for p in parts
    )


def _check(path, params, expected, sizes, origin, load_head, module) -> None:
    """One ConfigError line for the first tensor of the file that this ViT cannot take."""
    where = f"weights file {path}"

    def named(name):
        return f"{name} ({origin[name]} in the file)" if origin.get(name, name) != name else name

    for name in params:  # layers this ViT does not have
        what = _extra(origin.get(name, name))
        if what and name not in expected:
            raise ConfigError(
                f"{where}: {origin.get(name, name)} is {what}; this ViT has no such layer "
                f"(use a checkpoint without it)"
            )
    for name, shape in expected.items():
        if name.startswith("head/") and not load_head:
            continue
        if name not in params:
            fix = "the file has no head: set load_head=False" if name.startswith("head/") else (
                _fix(sizes, module) if name.startswith("Transformer/encoderblock_") else
                "give a complete checkpoint"
            )  # fmt: skip
            raise ConfigError(f"{where}: {name} is missing; {fix}")
        have = tuple(params[name].shape)
        if have != tuple(shape):
            if name.startswith("head/"):
                fix = f"set load_head=False (a new head for the {module.num_classes} classes)"
            elif (
                name == "embedding/kernel"
                and have[:2] + have[3:] == tuple(shape)[:2] + tuple(shape)[3:]
            ):
                fix = f"set channels={have[2]}"
            else:
                fix = _fix(sizes, module)
            raise ConfigError(
                f"{where}: {named(name)} has shape {have} but this ViT's is {tuple(shape)}; {fix}"
            )
    for name in params:
        if name in expected or name.startswith("head/"):
            continue
        block = re.match(r"Transformer/encoderblock_\d+", name)
        if block:
            raise ConfigError(
                f"{where}: {block.group(0)} is a block this ViT lacks (the file has "
                f"{sizes.get('depth')}, this ViT {module.depth}); {_fix(sizes, module)}"
            )
        raise ConfigError(
            f"{where}: {origin.get(name, name)} is not a tensor of this ViT (no such layer); "
            f"use a plain ViT checkpoint or remove it from the file"
        )


def pretrained_vit(
    num_classes: int,
    weights: str | os.PathLike,
    variant: str | None = None,
    *,
    load_head: bool = False,
    trainable=None,
    approximate_gelu: bool | None = None,
    **kwargs,
) -> Model:
    """`sequax.core.vit.vit` starting from a weights file (read once, here).

    The sizes are `variant`'s, else `kwargs`' (width, depth, num_heads, mlp_dim, patch_size),
    the file's filling any left out (timm files need `num_heads` or a variant). `init(key, x)`
    returns the file's tensors (the position embeddings resampled to `x`'s grid) and a random
    head unless `load_head`. `approximate_gelu` None: tanh for big_vision/vit_jax files, erf
    for timm's. Other `kwargs` (mean, std, channels, head_zeroinit) go to the ViT.
    """
    path = os.path.expanduser(os.fspath(weights))
    tensors = read_checkpoint(path)
    if not tensors:
        raise ConfigError(f"weights file {path} holds no tensors; give a ViT checkpoint")
    if load_head and not num_classes:
        raise ConfigError("load_head=True needs a head: num_classes is 0; set load_head=False")
    heads = kwargs.get("num_heads")
    if not heads and variant:
        heads = VARIANTS.get(variant.partition("/")[0], {}).get("num_heads")
    origin: dict[str, str] = {}  # our name -> the file's (timm), for the messages
    try:
        layout = detect_layout(tensors)
        params = to_vit_params(tensors, layout, heads, origin)
    except ConfigError as error:
        raise ConfigError(f"weights file {path}: {error}") from None
    sizes = file_sizes(params)
    settings = dict(kwargs)
    if not variant:
        names = ("width", "depth", "num_heads", "mlp_dim", "patch_size")
        settings.update({k: sizes[k] for k in names if k in sizes and not kwargs.get(k)})
    if approximate_gelu is None:
        approximate_gelu = layout != "timm"
    settings["approximate_gelu"] = bool(approximate_gelu)
    model = vit(num_classes, variant, trainable=trainable, **settings)
    module = model.module

    if "pos_embedding" not in params:
        raise ConfigError(f"weights file {path}: pos_embedding is missing; give a ViT checkpoint")
    if "grid" not in sizes or sizes["grid"] ** 2 != params["pos_embedding"].shape[1]:
        have = np.shape(params.get("pos_embedding"))
        raise ConfigError(
            f"weights file {path}: pos_embedding has shape {have}, not a square grid of "
            f"positions; this loader takes square ViT checkpoints"
        )
    side = sizes["grid"] * module.patch_size
    image = jax.ShapeDtypeStruct((1, side, side, sizes.get("channels", 3)), jnp.float32)
    shapes = jax.eval_shape(
        lambda x: module.clone(resize=0).init({"params": jax.random.PRNGKey(0)}, x), image
    )["params"]
    flat = traverse_util.flatten_dict(shapes, sep="/")
    expected = {k: flat[k].shape for k in sorted(flat, key=_forward_order)}
    _check(path, params, expected, sizes, origin, load_head, module)
    loaded = {k: v for k, v in params.items() if k in expected}
    if not load_head:
        loaded = {k: v for k, v in loaded.items() if not k.startswith("head/")}

    random_init = model.init

    def init(key: jax.Array, x: jax.Array):
        params0, model_state = random_init(key, x)
        flat = traverse_util.flatten_dict(params0, sep="/")
        grid = tuple((module.resize or n) // module.patch_size for n in x.shape[1:3])  # as seen
        for name, value in loaded.items():
            leaf = flat[name]
            if name == "pos_embedding" and value.shape != leaf.shape:
                value = resample_posemb(value, grid)
            if value.shape != leaf.shape:
                fix = (
                    f"set channels={value.shape[2]} (the data has {x.shape[-1]})"
                    if name == "embedding/kernel" else "feed data the checkpoint fits"
                )  # fmt: skip
                raise ConfigError(
                    f"weights file {path}: {name} has shape {value.shape} but the ViT on "
                    f"inputs {tuple(x.shape)} needs {leaf.shape}; {fix}"
                )
            flat[name] = jnp.asarray(value, leaf.dtype)
        return traverse_util.unflatten_dict(flat, sep="/"), model_state

    return model._replace(init=init)
