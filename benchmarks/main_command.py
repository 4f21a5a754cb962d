"""
The main command's results: ``pyro-diffusion train`` on the digits and on the
Swiss roll with their default settings, timed on this machine.

Usage: python benchmarks/main_command.py [--out runs/benchmark]
The results replace their section of docs/benchmarks.md.
"""

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_section  # noqa: E402

from pyro_diffusion.cli import main as cli_main  # noqa: E402


def run(out, *args):
    if out.exists():
        shutil.rmtree(out)
    start = time.perf_counter()
    status = cli_main(["train", "--out", str(out), "--no-progress", *args])
    seconds = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"pyro-diffusion train {' '.join(args)} failed with status {status}")
    return json.loads((out / "metrics.json").read_text()), seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--out", default="runs/benchmark", help="the folder for the two run folders")
    args = parser.parse_args()
    root = Path(args.out)
    digits, digits_seconds = run(root / "digits")
    roll, roll_seconds = run(root / "swiss-roll", "--dataset", "swiss-roll")

    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, PyTorch threads: {torch.get_num_threads()}"
    lines = [
        "Command: `python benchmarks/main_command.py` (runs `pyro-diffusion train` and "
        f"`pyro-diffusion train --dataset swiss-roll` with default settings). Machine: {machine}.",
        "",
        "| data | T | SVI steps | wall time | held-out bound | reference |",
        "|---|---|---|---|---|---|",
        f"| digits (8x8, levels 0..16, {digits['heldout_examples']} held out) | {digits['timesteps']} | "
        f"{digits['steps']} | {digits_seconds / 60:.1f} min | "
        f"NLL <= {digits['heldout_nll_bits_per_dim']:.3f} +- {digits['heldout_nll_bits_per_dim_stderr']:.3f} "
        "bits/dim (integer scale, dequantized; +- is one standard error over examples) | "
        f"per-pixel categorical: {digits['baseline_nll_bits_per_dim']:.3f} bits/dim |",
        f"| Swiss roll (noise 0.05, {roll['heldout_examples']} held out) | {roll['timesteps']} | {roll['steps']} | "
        f"{roll_seconds / 60:.1f} min | "
        f"K = {roll['heldout_elbo_bits']:.3f} +- {roll['heldout_elbo_bits_stderr']:.3f} bits/example "
        f"(K - L_null = {roll['heldout_k_minus_l_null_bits']:.3f}) | "
        f"exact log-likelihood: {roll['true_log_likelihood_bits']:.3f} +- "
        f"{roll['true_log_likelihood_bits_stderr']:.3f} bits/example |",
        "",
        "The digits bound is the trace ELBO of the held-out examples under one uniform dequantization, "
        "converted to the integer scale with the Jacobian of the scaling; it bounds the discrete "
        "negative log-likelihood from above. The Swiss roll's exact log-likelihood integrates the "
        "generator's density along the curve; the bound must stay below it.",
    ]
    write_section("Main command: digits and Swiss roll", "\n".join(lines))
    print("\n".join(lines))
    print(
        f"digits NLL bound {digits['heldout_nll_bits_per_dim']:.3f} bits/dim vs baseline "
        f"{digits['baseline_nll_bits_per_dim']:.3f}; Swiss roll gap to exact "
        f"{roll['true_log_likelihood_bits'] - roll['heldout_elbo_bits']:.3f} bits"
    )


if __name__ == "__main__":
    main()
