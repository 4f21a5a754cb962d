"""
Gradient variance per second of compute: TimestepELBO against Trace_ELBO on
the full model/guide pair.

Both estimate the gradient of the same bound. For each estimator the script
draws many gradients on one fixed minibatch. It reports the total variance
(the sum over parameters of the per-coordinate variance), the seconds per
gradient, and the efficiency 1 / (variance * seconds), which measures how
much variance reduction one second of compute buys. It measures an
untrained network and a trained one, because the two estimators' variances
change differently as the reverse kernel approaches the forward posterior.

Usage: python benchmarks/gradient_variance.py [--draws 100] [--timesteps 40 400]
The results replace their section of docs/benchmarks.md.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

import pyro
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import ClippedAdam

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_section  # noqa: E402

from pyro_diffusion import TimestepELBO  # noqa: E402
from pyro_diffusion.data import sample_swiss_roll  # noqa: E402
from pyro_diffusion.experiment import RunConfig, build_model  # noqa: E402


def gradient_draws(diffusion, loss, x0, draws):
    params = [p for p in diffusion.reverse.parameters()]
    grads = []
    start = time.perf_counter()
    for _ in range(draws):
        for p in params:
            p.grad = None
        value = loss.differentiable_loss(diffusion.model, diffusion.guide, x0)
        value.backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in params]))
    seconds = (time.perf_counter() - start) / draws
    grads = torch.stack(grads)
    return grads, seconds


def measure(diffusion, x0, draws, label):
    rows = []
    means = {}
    for name, loss in [("Trace_ELBO (full pair)", Trace_ELBO()), ("TimestepELBO", TimestepELBO())]:
        grads, seconds = gradient_draws(diffusion, loss, x0, draws)
        variance = float(grads.var(0).sum())
        means[name] = grads.mean(0)
        rows.append((label, name, variance, seconds, 1.0 / (variance * seconds)))
    a, b = means.values()
    difference = float((a - b).norm() / a.norm())
    return rows, difference


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--train-steps", type=int, default=2000)
    parser.add_argument("--timesteps", type=int, nargs="+", default=[40, 400])
    args = parser.parse_args()
    torch.set_num_threads(1)
    pyro.set_rng_seed(0)

    data = sample_swiss_roll(10000, generator=torch.Generator().manual_seed(0))
    x0 = data[:64]
    lines = [
        "Command: `python benchmarks/gradient_variance.py "
        f"--draws {args.draws} --train-steps {args.train_steps} --timesteps "
        f"{' '.join(str(t) for t in args.timesteps)}` (one CPU thread).",
        "",
        "Swiss roll, the log-SNR schedule, MLP width 128, uniform time steps for TimestepELBO, "
        f"a fixed minibatch of {len(x0)} examples, {args.draws} gradient draws per row. "
        "Total variance is the sum over all network parameters of the per-coordinate gradient variance; "
        "efficiency is 1 / (variance x seconds per gradient), higher is better.",
        "",
        "| T | network | estimator | total gradient variance | seconds per gradient | efficiency |",
        "|---|---|---|---|---|---|",
    ]
    notes = []
    ratios = []
    for num_steps in args.timesteps:
        pyro.clear_param_store()
        config = RunConfig(dataset="swiss-roll", timesteps=num_steps).resolved()
        diffusion = build_model(config, 2)
        rows, difference = measure(diffusion, x0, args.draws, "untrained")
        notes.append((num_steps, "untrained", difference))
        svi = SVI(diffusion.model, diffusion.guide, ClippedAdam({"lr": 2e-3}), TimestepELBO())
        for _ in range(args.train_steps):
            svi.step(data[torch.randint(0, len(data), (128,))])
        trained_rows, difference = measure(diffusion, x0, args.draws, f"after {args.train_steps} steps")
        notes.append((num_steps, f"after {args.train_steps} steps", difference))
        rows += trained_rows
        for label, name, variance, seconds, efficiency in rows:
            lines.append(
                f"| {num_steps} | {label} | {name} | {variance:.4g} | {seconds * 1e3:.2f} ms | {efficiency:.4g} |"
            )
        for i in range(0, len(rows), 2):
            ratios.append((num_steps, rows[i][0], rows[i + 1][4] / rows[i][4]))
    lines.append("")
    for num_steps, label, difference in notes:
        lines.append(
            f"Relative distance between the two mean gradients (T = {num_steps}, {label}): {difference:.3f} "
            "(both estimate the same gradient, so it shrinks as the draws grow)."
        )
    lines.append("")
    for num_steps, label, ratio in ratios:
        lines.append(f"Efficiency of TimestepELBO relative to Trace_ELBO (T = {num_steps}, {label}): {ratio:.2f}x.")
    write_section("Gradient variance per second: TimestepELBO against Trace_ELBO", "\n".join(lines))
    print("\n".join(lines))
    print(f"efficiency ratio TimestepELBO / Trace_ELBO at T = {ratios[-1][0]} after training: {ratios[-1][2]:.2f}")


if __name__ == "__main__":
    main()
