"""Torch backbones that ship with sequax, for the bridge's tests, configs and benchmarks.

Both are plain `torch.nn.Module`s, trained by sequax through `from_torch` (configs name them
as `config.model.factory = "sequax.engine.torch_bridge.zoo:small_cnn"`).

    net = resnet18_reduced(num_classes=10)          # the GEM/DER papers' ResNet-18, nf=20
    model = from_torch(net, np.zeros((2, 32, 32, 3), np.float32))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SmallCNN(nn.Module):
    """Two conv(3x3) + BatchNorm + ReLU + max-pool(2) blocks, then a linear classifier.

    Args:
      num_classes: width of the classifier.
      in_channels: image channels (1 for MNIST, 3 for CIFAR).
      widths: output channels of the two convolutions.
      image_size: input height (= width), which fixes the classifier's input size.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        widths: tuple[int, int] = (16, 32),
        image_size: int = 28,
    ):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(widths[0], widths[1], 3, padding=1),
            nn.BatchNorm2d(widths[1]),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        side = image_size // 4
        self.classifier = nn.Linear(widths[1] * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def small_cnn(
    num_classes: int = 10, in_channels: int = 1, widths=(16, 32), image_size: int = 28
) -> SmallCNN:
    """`SmallCNN` (a config factory: `config.model.kwargs` are its arguments)."""
    return SmallCNN(num_classes, in_channels, tuple(widths), image_size)


class DepthwiseSeparableCNN(nn.Module):
    """MobileNet-style blocks: depthwise conv(3x3) + BatchNorm + ReLU6, pointwise conv(1x1) +
    BatchNorm + ReLU6, each block halving the image; then global average pooling and a
    linear classifier (Howard et al. 2017, "MobileNets", Table 1's block).

    Args:
      num_classes: width of the classifier.
      in_channels: image channels.
      widths: output channels of each block's pointwise convolution.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, widths=(32, 64)):
        super().__init__()
        layers, channels = [nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)], widths[0]
        layers += [nn.BatchNorm2d(channels), nn.ReLU6()]
        for width in widths:
            layers += [
                nn.Conv2d(channels, channels, 3, stride=2, padding=1, groups=channels, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU6(),
                nn.Conv2d(channels, width, 1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU6(),
            ]
            channels = width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def ds_cnn(num_classes: int = 10, in_channels: int = 1, widths=(32, 64)) -> DepthwiseSeparableCNN:
    """`DepthwiseSeparableCNN` (a config factory)."""
    return DepthwiseSeparableCNN(num_classes, in_channels, tuple(widths))


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 conv + BatchNorm, a projection shortcut (1x1 conv + BN)
    when the stride or the width changes."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != self.expansion * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(
                    in_planes, self.expansion * planes, kernel_size=1, stride=stride, bias=False
                ),
                nn.BatchNorm2d(self.expansion * planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return F.relu(out)


class ResNet(nn.Module):
    """The reduced ResNet-18 of the continual-learning literature.

    Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning", NeurIPS 2017,
    and Buzzega et al., "Dark Experience for General Continual Learning", NeurIPS 2020 (the
    mammoth code's `backbone/ResNet18.py`): a 3x3 stride-1 stem conv + BN + ReLU (no
    max-pool), four stages of `BasicBlock`s with nf, 2nf, 4nf, 8nf filters (strides 1, 2, 2,
    2), global average pooling, one linear classifier. Names follow mammoth (`conv1`, `bn1`,
    `layer1..4`, `linear`), so a mammoth state dict loads with `strict=False` (its
    `_features.*` and `classifier.*` entries are aliases of the same tensors).

    Args:
      num_blocks: blocks per stage ([2, 2, 2, 2] for ResNet-18).
      num_classes: width of the classifier.
      nf: filters of the first stage (20 in GEM/DER's reduced network, 64 in the full one).
      in_channels: image channels (3).
    """

    def __init__(
        self, num_blocks=(2, 2, 2, 2), num_classes: int = 10, nf: int = 20, in_channels: int = 3
    ):
        super().__init__()
        self.in_planes = nf
        self.conv1 = _conv3x3(in_channels, nf)
        self.bn1 = nn.BatchNorm2d(nf)
        self.layer1 = self._make_layer(nf, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(nf * 2, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(nf * 4, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(nf * 8, num_blocks[3], stride=2)
        self.linear = nn.Linear(nf * 8 * BasicBlock.expansion, num_classes)

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes * BasicBlock.expansion
        return nn.Sequential(*layers)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.avg_pool2d(out, out.shape[2])  # global average pool over the final map
        return out.view(out.size(0), -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))


def resnet18_reduced(num_classes: int = 10, nf: int = 20, in_channels: int = 3) -> ResNet:
    """The GEM/DER reduced ResNet-18: `BasicBlock`, [2, 2, 2, 2], nf=20 (≈1.1 M parameters at
    10 classes)."""
    return ResNet((2, 2, 2, 2), num_classes, nf, in_channels)
