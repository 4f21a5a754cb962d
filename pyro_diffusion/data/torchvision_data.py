"""
MNIST, Fashion-MNIST and CIFAR-10 through torchvision's dataset classes.

Nothing is downloaded unless ``download=True`` is passed. Offline, the
classes read the layout torchvision itself writes: for MNIST and
Fashion-MNIST the four uncompressed IDX files in ``<root>/MNIST/raw/`` or
``<root>/FashionMNIST/raw/``, for CIFAR-10 the pickled batches in
``<root>/cifar-10-batches-py/``. :func:`write_idx_folder` writes the MNIST
layout from arrays, for example from real digits bundled in another
package.
"""

import enum
import struct
from pathlib import Path

import numpy as np
import torch

from ..options import parse_option

__all__ = ["IDX_FILES", "TorchvisionDataset", "load_torchvision_split", "write_idx_folder"]

#: The uncompressed IDX files of the MNIST layout, in ``<root>/<folder>/raw/``.
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

#: The files of the CIFAR-10 layout, in ``<root>/cifar-10-batches-py/``.
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")


class TorchvisionDataset(str, enum.Enum):
    """The torchvision image data sets the command line reads."""

    #: Handwritten digits, 1x28x28, 60000 training and 10000 test images.
    MNIST = "mnist"
    #: Clothing images, 1x28x28, 60000 training and 10000 test images.
    FASHION_MNIST = "fashion-mnist"
    #: Natural images, 3x32x32, 50000 training and 10000 test images.
    CIFAR10 = "cifar10"

    @classmethod
    def parse(cls, value):
        return parse_option(cls, value, "torchvision data set")


def _expected_files(kind, root):
    if kind is TorchvisionDataset.CIFAR10:
        folder = Path(root) / "cifar-10-batches-py"
        return folder, CIFAR10_FILES
    folder = Path(root) / ("MNIST" if kind is TorchvisionDataset.MNIST else "FashionMNIST") / "raw"
    return folder, IDX_FILES


def load_torchvision_split(name, root, download=False):
    """
    Load the training and test images of a torchvision data set as 8-bit
    integers.

    :param name: ``"mnist"``, ``"fashion-mnist"`` or ``"cifar10"``.
    :param str root: the folder torchvision reads (and writes when downloading).
    :param bool download: let torchvision download missing files.
    :returns: ``(train, test)``, uint8 tensors of shape ``[N, C, H, W]``.
    :raises ValueError: for an unknown name, or, without ``download``, a
        root that lacks the expected files (named in the message).
    """
    from torchvision import datasets

    kind = TorchvisionDataset.parse(name)
    if root is None:
        raise ValueError(f"data set {kind.value!r} needs --data-root: the folder that contains (or will contain) its files")
    folder, files = _expected_files(kind, root)
    missing = [file for file in files if not (folder / file).is_file()]
    if missing and not download:
        raise ValueError(
            f"{folder} lacks {', '.join(missing)}: put the uncompressed files there, or pass --download to let "
            "torchvision fetch them"
        )
    classes = {
        TorchvisionDataset.MNIST: datasets.MNIST,
        TorchvisionDataset.FASHION_MNIST: datasets.FashionMNIST,
        TorchvisionDataset.CIFAR10: datasets.CIFAR10,
    }
    splits = []
    for train in (True, False):
        try:
            dataset = classes[kind](str(root), train=train, download=download)
        except RuntimeError as error:
            reason = " ".join(str(error).split())[:200]
            raise ValueError(
                f"torchvision could not read {folder} ({reason}): the files may be truncated or corrupt; "
                "replace them"
            ) from error
        data = torch.as_tensor(np.asarray(dataset.data))
        # MNIST-style data are [N, H, W]; CIFAR-10's are [N, H, W, C].
        data = data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2)
        splits.append(data.contiguous().to(torch.uint8))
    return splits[0], splits[1]


def _write_idx(path, array, magic_type):
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, magic_type, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    Path(path).write_bytes(header + array.tobytes())


def write_idx_folder(root, train_images, train_labels, test_images, test_labels, folder="MNIST"):
    """
    Write images and labels in the MNIST layout that torchvision reads
    offline: the four uncompressed IDX files in ``<root>/<folder>/raw/``.

    :param str root: the data root.
    :param train_images: integers in ``0..255``, shape ``[N, 28, 28]``.
    :param train_labels: integers in ``0..9``, shape ``[N]``.
    :param test_images: shape ``[M, 28, 28]``.
    :param test_labels: shape ``[M]``.
    :param str folder: ``"MNIST"`` or ``"FashionMNIST"``.
    :returns: the ``raw`` folder written.
    :rtype: pathlib.Path
    """
    raw = Path(root) / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    arrays = [train_images, train_labels, test_images, test_labels]
    for file, array in zip(IDX_FILES, arrays):
        array = np.asarray(array)
        if array.min() < 0 or array.max() > 255:
            raise ValueError(f"{file}: values must be integers in 0..255")
        # IDX type 0x08 is unsigned bytes for both images and labels.
        _write_idx(raw / file, array, 0x08)
    return raw
