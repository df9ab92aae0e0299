"""The paper's CIFAR architectures, written for fxsurgeon (input 3x32x32), its ImageNet
VGG-16 (3x224x224), the demo's small network for 1x8x8 digits, and a ViT and a ConvNeXt
for the same digits, and one-dimensional CNNs for MNIST-1D; :mod:`.dead` makes channels
dead on purpose, to check a surgery keeps a model's function."""
from .cnn1d import Cnn1d, mnist1d_balanced, mnist1d_skewed, mnist1d_uniform
from .densenet import DenseNetBC, densenet_bc100_k40_cifar
from .resnet import CifarResNet, resnet164_cifar
from .small import SmallCNN, digits_cnn
from .transformer import TinyConvNeXt, TinyViT, convnext_digits, vit_digits
from .vgg import VGG16NR, VGGCifar, vgg16_nr_imagenet, vgg19_cifar

#: name -> factory(num_classes=10), for ``zoo:NAME`` model specs
MODELS = {"vgg19_cifar": vgg19_cifar, "resnet164_cifar": resnet164_cifar,
          "densenet_bc100_k40_cifar": densenet_bc100_k40_cifar, "digits_cnn": digits_cnn,
          "vgg16_nr_imagenet": vgg16_nr_imagenet, "vit_digits": vit_digits,
          "convnext_digits": convnext_digits, "mnist1d_skewed": mnist1d_skewed,
          "mnist1d_balanced": mnist1d_balanced, "mnist1d_uniform": mnist1d_uniform}
#: one torchvision classification model per family: the sample the tests sweep in CI and the
#: benches time (``pytest --full`` sweeps them all)
TORCHVISION_FAMILIES = ["resnet50", "densenet121", "mobilenet_v3_large", "efficientnet_b0",
                        "shufflenet_v2_x1_0", "convnext_tiny", "regnet_y_400mf", "vit_b_16", "swin_t",
                        "squeezenet1_0"]
#: example-input shapes that differ from 1x3x32x32
SHAPES = {"digits_cnn": (1, 1, 8, 8), "vgg16_nr_imagenet": (1, 3, 224, 224), "vit_digits": (1, 1, 8, 8),
          "convnext_digits": (1, 1, 8, 8), "mnist1d_skewed": (1, 1, 40), "mnist1d_balanced": (1, 1, 40),
          "mnist1d_uniform": (1, 1, 40)}

__all__ = ["MODELS", "TORCHVISION_FAMILIES", "VGGCifar", "CifarResNet", "DenseNetBC", "vgg19_cifar",
           "resnet164_cifar",
           "densenet_bc100_k40_cifar", "SmallCNN", "digits_cnn", "SHAPES", "VGG16NR",
           "vgg16_nr_imagenet", "TinyViT", "TinyConvNeXt", "vit_digits", "convnext_digits", "Cnn1d",
           "mnist1d_skewed", "mnist1d_balanced", "mnist1d_uniform"]
