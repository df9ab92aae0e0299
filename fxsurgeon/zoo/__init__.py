"""The paper's CIFAR architectures, written for fxsurgeon (input 3x32x32)."""
from .densenet import DenseNetBC, densenet_bc100_k40_cifar
from .resnet import CifarResNet, resnet164_cifar
from .vgg import VGGCifar, vgg19_cifar

#: name -> factory(num_classes=10), for ``zoo:NAME`` model specs
MODELS = {"vgg19_cifar": vgg19_cifar, "resnet164_cifar": resnet164_cifar,
          "densenet_bc100_k40_cifar": densenet_bc100_k40_cifar}

__all__ = ["MODELS", "VGGCifar", "CifarResNet", "DenseNetBC", "vgg19_cifar", "resnet164_cifar",
           "densenet_bc100_k40_cifar"]
