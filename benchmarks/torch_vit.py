"""A PyTorch transcription of timm's `VisionTransformer` (timm/models/vision_transformer.py:
`Attention`, `Mlp`, `Block`, `VisionTransformer.forward_features` with the class token and
`global_pool="token"`): the reference network of the weight-import tests, the float64
backbone of the prompt methods' PyTorch checks (tests/vit_reference.py), and the backbone of
the plain PyTorch loops the ViT benchmark runs against (benchmarks/vit.py).

Its `state_dict` has timm's layout (patch_embed.proj, cls_token, pos_embed over [CLS] and
the patches, blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm, head).
`forward` takes NHWC images in [0, 1] like `sequax.core.vit.ViT`, and the same two hooks:
`prompts={layer: [B, Lp, D]}` prepends tokens after [CLS] at a layer's input, and
`prefixes={layer: (keys, values)}` prepends raw keys and values inside a layer's attention
(the `PreT_Attention` of l2p-pytorch/LAMDA-PILOT backbone/vit_dualprompt.py).

    net = TorchViT.from_flax(params, num_heads=2)            # our weights, float64
    net = TorchViT(10, image_size=8, patch_size=4, width=16, depth=2, num_heads=2, mlp_dim=32)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class Attention(nn.Module):
    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x, prefix=None):
        b, n, c = x.shape
        h = self.num_heads
        qkv = self.qkv(x).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B, H, N, hd]
        if prefix is not None:
            pk, pv = (p.reshape(b, -1, h, c // h).permute(0, 2, 1, 3) for p in prefix)
            k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
        attn = (q @ k.transpose(-2, -1)) * (c // h) ** -0.5
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, width: int, mlp_dim: int, approximate_gelu: bool):
        super().__init__()
        self.fc1 = nn.Linear(width, mlp_dim)
        self.act = nn.GELU(approximate="tanh" if approximate_gelu else "none")
        self.fc2 = nn.Linear(mlp_dim, width)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, width, num_heads, mlp_dim, approximate_gelu):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = Attention(width, num_heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = Mlp(width, mlp_dim, approximate_gelu)

    def forward(self, x, prefix=None):
        x = x + self.attn(self.norm1(x), prefix)
        return x + self.mlp(self.norm2(x))


class TorchViT(nn.Module):
    """timm's ViT with a class token; `in_chans` channels (a one-channel input is repeated to
    fill them), inputs normalised by `mean`/`std` first."""

    def __init__(
        self,
        num_classes: int,
        *,
        image_size: int,
        patch_size: int,
        width: int,
        depth: int,
        num_heads: int,
        mlp_dim: int,
        in_chans: int = 1,
        approximate_gelu: bool = False,
        mean=(0.5,),
        std=(0.5,),
    ):
        super().__init__()
        self.mean, self.std, self.in_chans = tuple(mean), tuple(std), in_chans
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_chans, width, patch_size, stride=patch_size)
        tokens = (image_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + tokens, width) * 0.02)
        self.blocks = nn.ModuleList(
            [Block(width, num_heads, mlp_dim, approximate_gelu) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Linear(width, num_classes) if num_classes else nn.Identity()

    def forward(self, x, prompts=None, prefixes=None):
        dtype = self.pos_embed.dtype
        x = torch.as_tensor(x, dtype=dtype)
        mean, std = (torch.tensor(v, dtype=dtype) for v in (self.mean, self.std))
        if x.is_cuda:  # (not under the torch bridge's tracing, whose tensors are JAX's)
            mean, std = mean.to(x.device), std.to(x.device)
        x = (x - mean) / std
        x = x.permute(0, 3, 1, 2)
        if x.shape[1] == 1 and self.in_chans > 1:
            x = x.repeat(1, self.in_chans, 1, 1)
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        prompts, prefixes = dict(prompts or {}), dict(prefixes or {})
        for layer, block in enumerate(self.blocks):
            if layer in prompts:
                x = torch.cat([x[:, :1], prompts[layer].to(dtype), x[:, 1:]], dim=1)
            x = block(x, prefixes.get(layer))
        tokens = self.norm(x)
        features = tokens[:, 0]
        return {"logits": self.head(features), "features": features, "tokens": tokens}

    @classmethod
    def from_flax(
        cls,
        params,
        num_heads: int,
        approximate_gelu: bool = True,
        dtype=torch.float64,
        mean=(0.5,),
        std=(0.5,),
    ) -> TorchViT:
        """The network `sequax.core.vit.ViT` computes with `params`, in timm's layout: our
        position embeddings skip [CLS], so its pos_embed row is zero."""
        a = lambda v: torch.tensor(np.asarray(v, np.float64))  # noqa: E731
        kernel = np.asarray(params["embedding"]["kernel"])  # [p, p, C, D]
        p, _, in_chans, width = kernel.shape
        blocks = sorted(
            (k for k in params["Transformer"] if k.startswith("encoderblock_")),
            key=lambda k: int(k.split("_")[1]),
        )
        mlp_dim = params["Transformer"][blocks[0]]["MlpBlock_0"]["Dense_0"]["kernel"].shape[1]
        tokens = params["pos_embedding"].shape[1]
        side = int(round(tokens**0.5)) * p
        num_classes = params["head"]["kernel"].shape[1] if "head" in params else 0
        net = cls(
            num_classes, image_size=side, patch_size=p, width=width, depth=len(blocks),
            num_heads=num_heads, mlp_dim=mlp_dim, in_chans=in_chans,
            approximate_gelu=approximate_gelu, mean=mean, std=std,
        )  # fmt: skip
        state = {
            "patch_embed.proj.weight": a(kernel.transpose(3, 2, 0, 1)),
            "patch_embed.proj.bias": a(params["embedding"]["bias"]),
            "cls_token": a(params["cls"]),
            "pos_embed": torch.cat([torch.zeros(1, 1, width), a(params["pos_embedding"])], 1),
            "norm.weight": a(params["Transformer"]["encoder_norm"]["scale"]),
            "norm.bias": a(params["Transformer"]["encoder_norm"]["bias"]),
        }
        if num_classes:
            state["head.weight"] = a(params["head"]["kernel"]).T
            state["head.bias"] = a(params["head"]["bias"])
        for i, name in enumerate(blocks):
            blk = params["Transformer"][name]
            att = blk["MultiHeadDotProductAttention_0"]
            state[f"blocks.{i}.attn.qkv.weight"] = torch.cat(
                [a(att[k]["kernel"]).reshape(width, width).T for k in ("query", "key", "value")]
            )
            state[f"blocks.{i}.attn.qkv.bias"] = torch.cat(
                [a(att[k]["bias"]).reshape(width) for k in ("query", "key", "value")]
            )
            state[f"blocks.{i}.attn.proj.weight"] = a(att["out"]["kernel"]).reshape(width, width).T
            state[f"blocks.{i}.attn.proj.bias"] = a(att["out"]["bias"])
            for ln, norm in (("LayerNorm_0", "norm1"), ("LayerNorm_1", "norm2")):
                state[f"blocks.{i}.{norm}.weight"] = a(blk[ln]["scale"])
                state[f"blocks.{i}.{norm}.bias"] = a(blk[ln]["bias"])
            for dense, fc in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
                state[f"blocks.{i}.mlp.{fc}.weight"] = a(blk["MlpBlock_0"][dense]["kernel"]).T
                state[f"blocks.{i}.mlp.{fc}.bias"] = a(blk["MlpBlock_0"][dense]["bias"])
        net = net.to(dtype)
        net.load_state_dict({k: v.to(dtype) for k, v in state.items()})
        return net
