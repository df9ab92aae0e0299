"""Datasets for ``fxsurgeon train``, by spec. Nothing is downloaded.

- ``digits``: scikit-learn's 1,797 handwritten 8x8 digits (they ship inside the
  package), split 1,437 train / 360 test with a fixed seed;
- ``cifar10:DIR``, ``cifar100:DIR``: the CIFAR python archives already extracted in
  DIR (as torchvision leaves them), with the usual crop-and-flip augmentation. They are
  pickles, read by an unpickler that builds only dicts, lists, bytes and numpy arrays:
  a file that names any other code is an error, never run;
- ``imagefolder:DIR``: ``DIR/train`` and ``DIR/val`` with one folder per class.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset, TensorDataset

from ..errors import FxSurgeonError

_CIFAR_MEAN, _CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class Data:
    """A train and a test set, the shape of one input (batch 1) and the class count."""

    train: Dataset
    test: Dataset
    input_shape: tuple[int, ...]
    num_classes: int


def _digits() -> Data:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise FxSurgeonError("the digits data ships with scikit-learn: pip install scikit-learn") from None
    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = (x - 0.3) / 0.4
    y = torch.tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = order[:1437], order[1437:]
    return Data(TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test]), (1, 1, 8, 8), 10)


class _Images(Dataset):
    """uint8 images (N, C, H, W) with labels, scaled to [0, 1] and transformed on access."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i].float() / 255), int(self.labels[i])


class _ArchiveUnpickler(pickle.Unpickler):
    """Builds what CIFAR's archives hold (dicts, lists, bytes, numpy arrays), nothing else."""

    ALLOWED = {("_codecs", "encode"), ("numpy", "ndarray"), ("numpy", "dtype"),
               *((f"numpy.{core}.multiarray", "_reconstruct") for core in ("core", "_core")),
               *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core"))}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR archive never does")
        return super().find_class(module, name)


def _cifar_batches(root: Path, names: list[str], key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR's python archive files (pickled dicts of uint8 rows and labels)."""
    images, labels = [], []
    for name in names:
        try:
            with open(root / name, "rb") as f:
                batch = _ArchiveUnpickler(f, encoding="bytes").load()
            images.append(torch.as_tensor(batch[b"data"], dtype=torch.uint8).reshape(-1, 3, 32, 32))
            labels.append(torch.as_tensor(batch[key], dtype=torch.long))
        except Exception as exc:  # noqa: BLE001 - any unreadable archive gets the same explanation
            raise FxSurgeonError(f"{str(root / name)!r} is not a CIFAR archive: {type(exc).__name__}: "
                                 f"{exc}") from None
    return torch.cat(images), torch.cat(labels)


def _cifar(root: str, classes: int) -> Data:
    """CIFAR-10/100 from the extracted python archive: ``root`` or the
    ``cifar-10-batches-py`` / ``cifar-100-python`` folder inside it."""
    from torchvision.transforms import v2 as T

    sub = "cifar-10-batches-py" if classes == 10 else "cifar-100-python"
    base = Path(root) / sub if (Path(root) / sub).is_dir() else Path(root)
    train_names = [f"data_batch_{i}" for i in range(1, 6)] if classes == 10 else ["train"]
    test_names = ["test_batch"] if classes == 10 else ["test"]
    missing = [n for n in train_names + test_names if not (base / n).is_file()]
    if missing:
        raise FxSurgeonError(f"no CIFAR-{classes} archive extracted in {root!r} (missing {missing}); "
                             f"fxsurgeon never downloads: fetch it once with torchvision")
    key = b"labels" if classes == 10 else b"fine_labels"
    norm = T.Normalize(_CIFAR_MEAN, _CIFAR_STD)
    augment = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), norm])
    return Data(_Images(*_cifar_batches(base, train_names, key), augment),
                _Images(*_cifar_batches(base, test_names, key), norm), (1, 3, 32, 32), classes)


def _imagefolder(root: str, size: int = 224) -> Data:
    import torchvision
    from torchvision import transforms as T
    norm = [T.ToTensor(), T.Normalize(_IMAGENET_MEAN, _IMAGENET_STD)]
    parts = {}
    for split in ("train", "val"):
        path = Path(root) / split
        if not path.is_dir():
            raise FxSurgeonError(f"imagefolder:{root} needs {path} with one folder per class")
        tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), *norm]) if split == "train" \
            else T.Compose([T.Resize(size * 8 // 7), T.CenterCrop(size), *norm])
        try:
            parts[split] = torchvision.datasets.ImageFolder(str(path), transform=tf)
        except FileNotFoundError as err:           # no class folders, or no images in them
            raise FxSurgeonError(f"imagefolder:{root}: {err}") from None
    if parts["train"].classes != parts["val"].classes:
        raise FxSurgeonError(f"imagefolder:{root}: train and val have different classes")
    return Data(parts["train"], parts["val"], (1, 3, size, size), len(parts["train"].classes))


def load_data(spec: str, image_size: int = 224) -> Data:
    """The datasets a spec names (see the module docstring)."""
    kind, _, root = spec.partition(":")
    if kind == "digits" and not root:
        return _digits()
    if kind in ("cifar10", "cifar100") and root:
        return _cifar(root, int(kind[5:]))
    if kind == "imagefolder" and root:
        return _imagefolder(root, image_size)
    raise FxSurgeonError(f"unknown data {spec!r}: use digits, cifar10:DIR, cifar100:DIR or imagefolder:DIR")
