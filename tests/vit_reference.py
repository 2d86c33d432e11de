"""The PyTorch transcription of timm's ViT the ViT tests compare against
(`benchmarks/torch_vit.py`, shared with the plain PyTorch loops of the ViT benchmark)."""

from benchmarks.torch_vit import Attention, Block, Mlp, TorchViT  # noqa: F401 - re-exported

__all__ = ["Attention", "Block", "Mlp", "TorchViT"]
