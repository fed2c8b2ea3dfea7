"""Datasets: files (found, downloaded, checked), readers, and arrays on the backend.

- :mod:`~xpcnn.data.files`: the search order (``data_dir``, ``XPCNN_DATA_DIR``, cache, download) and checks;
- :mod:`~xpcnn.data.mnist`: IDX files: the bundled MNIST subset, MNIST, Fashion-MNIST;
- :mod:`~xpcnn.data.cifar`: CIFAR-10 from its binary archive;
- :mod:`~xpcnn.data.dataset`: ``normalize``, ``Dataset`` and its batches, ``random_crop_flip``, ``load_dataset``,
  ``load_arrays`` and ``load_data`` (``--data``: an .npz file or an image folder);
- :mod:`~xpcnn.data.folder`: ``FolderDataset``, image folders (one subfolder per class) read batch by batch;
- :mod:`~xpcnn.data.checks`: the checks every entry makes of images, labels and normalization.
"""

from .checks import MAX_CLASSES, check_dataset, check_images, check_labels, check_statistics
from .cifar import CIFAR10, CIFAR10_SHA256, load_cifar10, read_cifar10_archive
from .dataset import (DATASETS, MEAN, STD, Dataset, channels_first, load_arrays, load_data, load_dataset, normalize,
                      random_crop_flip, statistics)
from .folder import FolderDataset
from .files import DataError, DataNotFoundError, Source, cache_dir
from .mnist import (
    BUNDLED_SHA256,
    FASHION_MNIST,
    FASHION_MNIST_SHA256,
    FILES,
    MIRRORS,
    MNIST,
    MNIST_SHA256,
    download_mnist,
    find_mnist,
    load_bundled,
    load_fashion_mnist,
    load_mnist,
    read_idx,
)

__all__ = [
    "BUNDLED_SHA256", "CIFAR10", "CIFAR10_SHA256", "DATASETS", "DataError", "DataNotFoundError", "Dataset",
    "FASHION_MNIST", "FASHION_MNIST_SHA256", "FILES", "FolderDataset", "MAX_CLASSES", "MEAN", "MIRRORS", "MNIST",
    "MNIST_SHA256", "STD", "Source", "cache_dir", "channels_first", "check_dataset", "check_images", "check_labels",
    "check_statistics", "download_mnist", "find_mnist", "load_arrays", "load_bundled", "load_cifar10", "load_data",
    "load_dataset", "load_fashion_mnist", "load_mnist", "normalize", "random_crop_flip", "read_cifar10_archive",
    "read_idx", "statistics",
]
