"""The paper's CIFAR architectures, written for fxsurgeon (input 3x32x32), its ImageNet
VGG-16 (3x224x224), the demo's small network for 1x8x8 digits, and a ViT and a ConvNeXt
for the same digits."""
from .densenet import DenseNetBC, densenet_bc100_k40_cifar
from .resnet import CifarResNet, resnet164_cifar
from .small import SmallCNN, digits_cnn
from .transformer import TinyConvNeXt, TinyViT, convnext_digits, vit_digits
from .vgg import VGG16NR, VGGCifar, vgg16_nr_imagenet, vgg19_cifar

#: name -> factory(num_classes=10), for ``zoo:NAME`` model specs
MODELS = {"vgg19_cifar": vgg19_cifar, "resnet164_cifar": resnet164_cifar,
          "densenet_bc100_k40_cifar": densenet_bc100_k40_cifar, "digits_cnn": digits_cnn,
          "vgg16_nr_imagenet": vgg16_nr_imagenet, "vit_digits": vit_digits,
          "convnext_digits": convnext_digits}
#: example-input shapes that differ from 1x3x32x32
SHAPES = {"digits_cnn": (1, 1, 8, 8), "vgg16_nr_imagenet": (1, 3, 224, 224), "vit_digits": (1, 1, 8, 8),
          "convnext_digits": (1, 1, 8, 8)}

__all__ = ["MODELS", "VGGCifar", "CifarResNet", "DenseNetBC", "vgg19_cifar", "resnet164_cifar",
           "densenet_bc100_k40_cifar", "SmallCNN", "digits_cnn", "SHAPES", "VGG16NR",
           "vgg16_nr_imagenet", "TinyViT", "TinyConvNeXt", "vit_digits", "convnext_digits"]
