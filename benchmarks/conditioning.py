"""
Posterior sampling against the exact posterior: sequential Monte Carlo as
its particles grow, and the bias of the paper's per-step product.

The model is the exact reverse process of Gaussian data
N(m, diag(v)) (``GaussianDataReverse``), so the model's own marginal of
x_0 is Gaussian in closed form and so is its posterior given a noisy
observation y = x_0 + sigma * eps of every coordinate.

Usage: python benchmarks/conditioning.py [--runs 20] [--timesteps 100]
The tables replace their section of docs/benchmarks.md.
"""

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_section  # noqa: E402

from pyro_diffusion.conditioning import Observation, product_sample, smc_sample  # noqa: E402
from pyro_diffusion.exact import GaussianDataReverse, linear_chain_marginal  # noqa: E402
from pyro_diffusion.forward import GaussianForward  # noqa: E402
from pyro_diffusion.model import DiffusionModel  # noqa: E402
from pyro_diffusion.schedules import BetaSchedule  # noqa: E402

MEAN = torch.tensor([1.0, -0.5, 0.3, 2.0])
VARIANCE = torch.tensor([0.5, 0.2, 1.5, 0.05])
OBSERVED = torch.tensor([[0.2, 0.9, -1.0, 1.0]])


def exact_posterior(diffusion, y, sigma):
    """Compute the model's posterior of x_0 and log p(y) in closed form."""
    reverse = diffusion.reverse
    mean, variance = linear_chain_marginal(reverse.loc_coef, reverse.loc_offset, reverse.log_variance)
    mean, variance = mean.float(), variance.float()
    posterior_variance = 1 / (1 / variance + 1 / sigma**2)
    posterior_mean = posterior_variance * (mean / variance + y[0] / sigma**2)
    total = variance + sigma**2
    log_evidence = float((-0.5 * (math.log(2 * math.pi) + total.log() + (y[0] - mean) ** 2 / total)).sum())
    return posterior_mean, posterior_variance, log_evidence


def smc_errors(diffusion, y, sigma, num_particles, num_runs, seed):
    """Run ``num_runs`` independent samplers; return their moments, evidence and seconds per run."""
    observation = Observation(y.expand(num_runs, -1), noise_scale=sigma)
    start = time.perf_counter()
    result = smc_sample(diffusion, observation, num_particles, generator=torch.Generator().manual_seed(seed))
    seconds = (time.perf_counter() - start) / num_runs
    weights = result.log_weights.exp().unsqueeze(-1)
    means = (weights * result.particles).sum(1)
    variances = (weights * (result.particles - means.unsqueeze(1)) ** 2).sum(1)
    return means, variances, result.log_marginal_likelihood, result.effective_sample_size(), seconds


def _rounded(values):
    return [round(value, 3) for value in values.tolist()]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--runs", type=int, default=100, help="independent SMC runs per particle count")
    parser.add_argument("--timesteps", type=int, default=100, help="the number of diffusion steps T")
    parser.add_argument("--sigma", type=float, default=0.5, help="the observation noise on the model's scale")
    args = parser.parse_args()
    torch.set_num_threads(1)
    forward = GaussianForward(BetaSchedule.from_name("paper", args.timesteps, beta_1=0.01))
    diffusion = DiffusionModel(forward, GaussianDataReverse(forward, MEAN, VARIANCE, (len(MEAN),)))
    exact_mean, exact_variance, exact_evidence = exact_posterior(diffusion, OBSERVED, args.sigma)

    lines = [
        f"Command: `python benchmarks/conditioning.py --runs {args.runs} --timesteps {args.timesteps} "
        f"--sigma {args.sigma}` (one CPU thread).",
        "",
        f"Data N(m, diag(v)) with m = {_rounded(MEAN)}, v = {_rounded(VARIANCE)}, the exact reverse kernels of the "
        f"paper schedule with T = {args.timesteps}, and one observation y = {_rounded(OBSERVED[0])} of every "
        f"coordinate with noise sigma = {args.sigma}. Errors are against the model's exact posterior, averaged "
        f"over {args.runs} independent runs; the mean error is the root mean square over runs and coordinates of "
        "the weighted posterior mean minus the exact one, and the variance ratio is the weighted posterior "
        "variance over the exact one, averaged.",
        "",
        "| sampler | particles | RMS error of the mean | variance ratio | log p(y) error, nats (mean +- sd over runs) "
        "| final ESS | seconds per run |",
        "|---|---|---|---|---|---|---|",
    ]
    for num_particles in (10, 100, 1000, 10000):
        runs = args.runs if num_particles <= 1000 else max(4, args.runs // 4)
        means, variances, evidence, ess, seconds = smc_errors(
            diffusion, OBSERVED, args.sigma, num_particles, runs, seed=num_particles
        )
        rms = float(((means - exact_mean) ** 2).mean().sqrt())
        ratio = float((variances / exact_variance).mean())
        error = evidence - exact_evidence
        lines.append(
            f"| SMC | {num_particles} | {rms:.4f} | {ratio:.3f} | {float(error.mean()):+.3f} +- {float(error.std()):.3f} "
            f"| {float(ess.mean()):.1f} | {seconds:.3f} |"
        )

    num_samples = 20000
    start = time.perf_counter()
    samples = product_sample(
        diffusion, Observation(OBSERVED.expand(num_samples, -1), noise_scale=args.sigma), torch.Generator().manual_seed(0)
    )
    seconds = time.perf_counter() - start
    bias = samples.mean(0) - exact_mean
    ratio = samples.var(0) / exact_variance
    lines.append(
        f"| per-step product | {num_samples} samples | {float(bias.pow(2).mean().sqrt()):.4f} | {float(ratio.mean()):.3f} "
        f"| none | none | {seconds:.3f} (all samples) |"
    )
    lines += [
        "",
        "Per coordinate, the product's mean minus the exact posterior mean: "
        + ", ".join(f"{value:+.3f}" for value in bias.tolist())
        + "; its variance over the exact posterior variance: "
        + ", ".join(f"{value:.3f}" for value in ratio.tolist())
        + ". The exact posterior standard deviations are "
        + ", ".join(f"{value:.3f}" for value in exact_variance.sqrt().tolist())
        + ". With 20000 samples the product's standard error of the mean is below 0.005 per coordinate, so "
        "its bias is the heuristic's own, not sampling noise. SMC's error falls as its particles grow.",
    ]
    write_section("Posterior sampling: SMC against the per-step product", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
