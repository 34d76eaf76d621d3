"""5-datasets loader on format-exact fixtures, plus the real Fashion-MNIST from Debian."""
import os
import pickle

import numpy as np
import pytest
import torch

from gift_cl.data.base import DataError
from gift_cl.data.five_datasets import FIVE_DATASETS, load_five_datasets

from fixtures import (
    FASHION_MNIST_DEB_DIR,
    ID,
    benchmark_from_config,
    decode_label,
    install_debian_fashion_mnist,
    require_debian_fashion_mnist,
    write_five_datasets,
    write_svhn,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def five_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("five"))
    return root, write_five_datasets(root)


def test_all_five_labels_counts_shapes(five_root):
    root, sizes = five_root
    tasks = load_five_datasets(root, **ID)
    assert [t.name for t in tasks] == list(FIVE_DATASETS)
    for task in tasks:
        assert task.num_classes == 10
        assert (len(task.train), len(task.test)) == sizes[task.name]
        assert isinstance(task.train.targets, list) and set(task.train.targets) == set(range(10))
        for ds in (task.train, task.test):
            for i in range(len(ds)):
                x, y = ds[i]
                # greyscale MNIST / notMNIST come out as 3-channel 32 px like the rest
                assert x.shape == (3, 32, 32) and isinstance(y, int) and decode_label(x) == y


def test_svhn_label_10_is_digit_0(five_root):
    root, _ = five_root
    (svhn,) = load_five_datasets(root, order=["svhn"], **ID)
    assert svhn.train.targets[:11] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0]


def test_order_subset_and_resize(five_root):
    root, _ = five_root
    tasks = load_five_datasets(root, order=["notmnist", "cifar10"], transform="resize", image_size=48, **ID)
    assert [t.name for t in tasks] == ["notmnist", "cifar10"]
    assert all(t.train[0][0].shape == (3, 48, 48) for t in tasks)
    assert tasks[0].train.cache.shape == (20, 28, 28, 3)  # notMNIST originals cached, resized per access


def test_config_instantiates(five_root):
    root, _ = five_root
    tasks = benchmark_from_config("five_datasets", root)
    assert [t.name for t in tasks] == ["svhn", "mnist", "cifar10", "notmnist", "fashion_mnist"]
    assert tasks[0].train[0][0].shape == (3, 32, 32)  # native transform by default


# ----------------------------------------------------------------------------- bad input
def _remove(*parts):
    return lambda root: os.remove(os.path.join(root, *parts))


def _garbage(*parts):
    def mutate(root):
        with open(os.path.join(root, *parts), "wb") as f:
            f.write(b"garbage")
    return mutate


def _rename(src, dst):
    return lambda root: os.rename(os.path.join(root, *src), os.path.join(root, *dst))


def _cifar_bad_label(root):
    with open(os.path.join(root, "cifar-10-batches-py", "test_batch"), "wb") as f:
        pickle.dump({"data": np.zeros((2, 3072), np.uint8), "labels": [1, 12]}, f)


def _svhn_bad_label(root):
    import scipy.io

    write_svhn(root)
    mat = scipy.io.loadmat(os.path.join(root, "test_32x32.mat"))
    mat["y"][3] = 11
    scipy.io.savemat(os.path.join(root, "test_32x32.mat"), {"X": mat["X"], "y": mat["y"]})


def _empty_class(root):
    folder = os.path.join(root, "notMNIST", "train", "C")
    for name in os.listdir(folder):
        os.remove(os.path.join(folder, name))


CIFAR, MNIST_RAW = "cifar-10-batches-py", ("MNIST", "raw")
BAD_INPUTS = {  # case: (dataset, mutation, expected message)
    "cifar_missing_root": ("cifar10", _rename([CIFAR], ["x"]),
                           f"{CIFAR}: directory not found; expected CIFAR-10 in torchvision's layout"),
    "cifar_missing_batch": ("cifar10", _remove(CIFAR, "data_batch_3"), "data_batch_3: file not found"),
    "cifar_corrupt_pickle": ("cifar10", _garbage(CIFAR, "test_batch"), "test_batch: not a CIFAR-10 batch"),
    "cifar_label_out_of_range": ("cifar10", _cifar_bad_label,
                                 "test_batch: label 12 at index 1 out of range, expected 0..9"),
    "mnist_gz_only": ("mnist", _rename([*MNIST_RAW, "t10k-labels-idx1-ubyte"],
                                       [*MNIST_RAW, "t10k-labels-idx1-ubyte.gz"]),
                      "t10k-labels-idx1-ubyte: file not found.*gunzip"),
    "mnist_corrupt_idx": ("mnist", _garbage(*MNIST_RAW, "train-images-idx3-ubyte"),
                          "train-images-idx3-ubyte .*not valid IDX files"),
    "fashion_missing": ("fashion_mnist", _remove("FashionMNIST", "raw", "train-labels-idx1-ubyte"),
                        "FashionMNIST/raw/train-labels-idx1-ubyte: file not found"),
    "svhn_missing": ("svhn", _remove("train_32x32.mat"), "train_32x32.mat: file not found"),
    "svhn_corrupt": ("svhn", _garbage("test_32x32.mat"), "test_32x32.mat: not an SVHN .mat"),
    "svhn_label_out_of_range": ("svhn", _svhn_bad_label,
                                "test_32x32.mat: label 11 at index 3 out of range, expected 1..10"),
    "notmnist_missing_letter": ("notmnist", _rename(["notMNIST", "test", "J"], ["notMNIST", "test", "K"]),
                                "notMNIST/test/J: directory not found"),
    "notmnist_empty_class": ("notmnist", _empty_class, "notMNIST/train/C: no images"),
    "notmnist_corrupt_png": ("notmnist", _garbage("notMNIST", "train", "B", "img0_B.png"),
                             "img0_B.png: not a readable image"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_one_clear_error(tmp_path, case):
    root = str(tmp_path)
    write_five_datasets(root)
    name, mutate, message = BAD_INPUTS[case]
    mutate(root)
    with pytest.raises(DataError, match=message):
        load_five_datasets(root, order=[name])


def test_checksums_compare_with_torchvision_list(five_root):
    root, _ = five_root
    with pytest.raises(DataError, match="data_batch_1: md5 differs from the official file's"):
        load_five_datasets(root, order=["cifar10"], verify_checksums=True)


def test_bad_options(five_root):
    root, _ = five_root
    with pytest.raises(DataError, match="dataset='kmnist' is not valid"):
        load_five_datasets(root, order=["kmnist"])
    with pytest.raises(DataError, match="transform='crop'"):
        load_five_datasets(root, transform="crop")


# ----------------------------------------------------------------------------- real data
@pytest.mark.real_data
def test_real_fashion_mnist_from_debian(tmp_path):
    require_debian_fashion_mnist()
    assert install_debian_fashion_mnist(str(tmp_path)), f"incomplete dataset-fashion-mnist in {FASHION_MNIST_DEB_DIR}"
    (task,) = load_five_datasets(str(tmp_path), order=["fashion_mnist"])
    assert (len(task.train), len(task.test)) == (60000, 10000)
    assert np.bincount(task.train.targets).tolist() == [6000] * 10
    assert np.bincount(task.test.targets).tolist() == [1000] * 10
    x, y = task.train[0]
    assert x.shape == (3, 32, 32) and y == 9  # the first training image is an ankle boot
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0
