"""Networks the benchmarks name by import path (`"benchmarks.conv_models:ds_cnn"`), kept
apart from the benchmark programs so that importing them defines no flags."""

from __future__ import annotations

import flax.linen as nn


class DSCNN(nn.Module):
    """The flax twin of `zoo.DepthwiseSeparableCNN` (ReLU6, BatchNorm, global pooling)."""

    widths: tuple[int, ...] = (32, 64)
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)  # noqa: E731
        x = nn.relu6(norm()(nn.Conv(self.widths[0], (3, 3), use_bias=False)(x)))
        for width in self.widths:
            channels = x.shape[-1]
            x = nn.Conv(channels, (3, 3), strides=2, feature_group_count=channels,
                        use_bias=False)(x)  # fmt: skip
            x = nn.relu6(norm()(x))
            x = nn.relu6(norm()(nn.Conv(width, (1, 1), use_bias=False)(x)))
        return {"logits": nn.Dense(self.num_classes)(x.mean((1, 2)))}


def ds_cnn(num_classes: int):
    return DSCNN(num_classes=num_classes)
