"""Architectures, registered by name. Parameter names follow RobustBench's model zoo so its weights load as they are."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from ..registry import Registry

ARCHS: Registry = Registry("architecture")


def resnet_stages(block: type[nn.Module], num_blocks: list[int]) -> list[nn.Sequential]:
    """The four stages of a CIFAR ResNet (64, 128, 256, 512 channels; stride 2 from the second stage on)."""
    stages, in_planes = [], 64
    for planes, blocks, stride in zip((64, 128, 256, 512), num_blocks, (1, 2, 2, 2)):
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(block(in_planes, planes, s))
            in_planes = planes
        stages.append(nn.Sequential(*layers))
    return stages


# ---- PreActResNet-18 (RobustBench resnet.py naming) ----
class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    def __init__(self, num_blocks: list[int], num_classes: int, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet_stages(PreActBlock, num_blocks)
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)


    def forward(self, x):
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        out = F.relu(self.bn(out))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


# ---- ResNet-18 (RobustBench / kuangliu naming) ----
class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
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


class ResNet(nn.Module):
    def __init__(self, num_blocks: list[int], num_classes: int, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet_stages(BasicBlock, num_blocks)
        self.linear = nn.Linear(512, num_classes)


    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


# ---- WideResNet (RobustBench wide_resnet.py naming) ----
class WideBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)

    def forward(self, x):
        act = self.relu1(self.bn1(x))
        # As in RobustBench: a projecting block feeds its shortcut the activated input.
        shortcut = x if self.equal_in_out else self.convShortcut(act)
        out = self.conv2(self.relu2(self.bn2(self.conv1(act))))
        return shortcut + out


class NetworkBlock(nn.Module):
    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(
            *[WideBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1) for i in range(n)]
        )

    def forward(self, x):
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen: int, num_classes: int, in_channels: int = 3):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        ch = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, ch[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU()
        self.fc = nn.Linear(ch[3], num_classes)

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


# ---- small nets for CPU work ----
def conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class SmallCNN(nn.Module):
    """A VGG-style net: conv-BN-ReLU stages, each ending in a 2x2 max-pool, then global pooling and a linear head."""

    def __init__(self, widths: list[list[int]], num_classes: int, in_channels: int = 3):
        super().__init__()
        layers, cin = [], in_channels
        for stage in widths:
            for cout in stage:
                layers.append(conv_bn(cin, cout))
                cin = cout
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.linear(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class AirBlock(nn.Module):
    """conv -> 2x2 max-pool -> BN -> GELU, then a residual conv-BN-GELU at the pooled size (airbench's block plus a
    skip connection). GELU rather than ReLU: smooth activations give better input gradients for adversarial
    training (Xie et al. 2020) and for sampling."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x):
        x = F.gelu(self.bn1(F.max_pool2d(self.conv1(x), 2)))
        return x + F.gelu(self.bn2(self.conv2(x)))


class AirNet(nn.Module):
    """The airbench94 layout (Keller Jordan, 2024) without its data-dependent whitening stem: a 3x3 conv stem, three
    pooled blocks, a final max-pool and a linear head. All convolutions run at 32, 16, 8 and 4 pixels, which keeps
    it close to a small CNN's speed at several times its capacity."""

    def __init__(self, widths: tuple[int, int, int, int], num_classes: int, in_channels: int = 3):
        super().__init__()
        self.stem = conv_bn(in_channels, widths[0])
        self.blocks = nn.Sequential(*[AirBlock(cin, cout) for cin, cout in zip(widths, widths[1:])])
        self.linear = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        out = self.blocks(self.stem(x))
        return self.linear(F.adaptive_max_pool2d(out, 1).flatten(1))


@ARCHS.register("preact-resnet18")
def preact_resnet18(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return PreActResNet([2, 2, 2, 2], num_classes, in_channels)


@ARCHS.register("resnet18")
def resnet18(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return ResNet([2, 2, 2, 2], num_classes, in_channels)


@ARCHS.register("resnet18-tiny-imagenet")
def resnet18_tiny_imagenet(num_classes: int = 200, in_channels: int = 3) -> nn.Module:
    """ResNet-18 for 64x64 inputs: the same layers; the global pool absorbs the larger final map."""
    return ResNet([2, 2, 2, 2], num_classes, in_channels)


@ARCHS.register("wrn-28-10")
def wrn_28_10(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return WideResNet(28, 10, num_classes, in_channels)


@ARCHS.register("wrn-34-10")
def wrn_34_10(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return WideResNet(34, 10, num_classes, in_channels)


@ARCHS.register("wrn-70-16")
def wrn_70_16(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return WideResNet(70, 16, num_classes, in_channels)


@ARCHS.register("cnn-small")
def cnn_small(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """About 0.5M parameters and 50M multiply-adds at 32x32: the CPU workhorse."""
    return SmallCNN([[32, 64], [128], [128], [256]], num_classes, in_channels)


@ARCHS.register("airnet")
def airnet(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """2.0M parameters, airbench94's widths (32 stem, 64, 256, 256): the fast recipe's CPU/GPU net."""
    return AirNet((32, 64, 256, 256), num_classes, in_channels)


@ARCHS.register("cnn-tiny")
def cnn_tiny(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """A few thousand parameters: for tests and smoke runs."""
    return SmallCNN([[8], [16]], num_classes, in_channels)
