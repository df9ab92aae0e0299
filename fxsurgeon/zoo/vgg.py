"""VGG-19 for CIFAR as in Neural Rejuvenation: BN after every conv, max-pools only after
the 4th and 10th conv, global average pooling and a single classifier layer."""
from __future__ import annotations

from torch import nn

#: channel widths of the 16 convolutions; "M" is a 2x2 max-pool
CFG = [64, 64, 128, 128, "M", 256, 256, 256, 256, 512, 512, "M", 512, 512, 512, 512, 512, 512]


class VGGCifar(nn.Module):
    """VGG-style network with BatchNorm after every conv, global average pooling and one
    linear layer; ``cfg`` lists conv widths (``(width, kernel)`` for another kernel than
    3) and ``"M"`` pools."""

    def __init__(self, num_classes: int = 10, cfg: list = CFG):
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            width, kernel = v if isinstance(v, tuple) else (v, 3)
            layers += [nn.Conv2d(c, width, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            c = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def vgg19_cifar(num_classes: int = 10) -> VGGCifar:
    """VGG-19 for CIFAR (20.04M parameters for 10 classes)."""
    return VGGCifar(num_classes)


#: VGG-16's 13 convolutions (with its five max-pools)
CFG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG16NR(VGGCifar):
    """The paper's ImageNet VGG-16 (Neural Rejuvenation, Table 2): BatchNorm after every
    conv; the three fully connected layers replaced by two 1x1 convs of 4096 channels
    (each with BatchNorm, so NR judges them too), global average pooling and one linear
    layer to the classes."""

    def __init__(self, num_classes: int = 1000):
        super().__init__(num_classes, CFG16 + [(4096, 1), (4096, 1)])


def vgg16_nr_imagenet(num_classes: int = 1000) -> VGG16NR:
    """The paper's ImageNet VGG-16 (37.71M parameters for 1000 classes; 16.3G MACs at 224x224)."""
    return VGG16NR(num_classes)
