"""
The library against Hugging Face diffusers' DDPMScheduler: time per
training step and per sampling run with the same network, batch and T.

Training: one SVI step of TimestepELBO (the library) against a step built
on diffusers, which draws t uniformly, noises the batch with
``DDPMScheduler.add_noise`` and takes the mean squared error of the
predicted noise. The two losses differ. The library trains the bound, whose
one-step estimate evaluates the network twice per example: at x_t for the
drawn step and at x_1 for the decoder term. The diffusers step trains the
simple noise loss with one evaluation. A third step computes the library's
bound in plain PyTorch, to separate the cost of the loss from the cost of
the framework.

Sampling: ``diffusion.sample`` against a loop over ``DDPMScheduler.step``
with the same network and betas.

diffusers is a benchmark-only dependency (``pip install diffusers``), and
the library never imports it.

Usage: python benchmarks/peer_diffusers.py [--rounds 10] [--block-steps 10] [--pairs 5] [--profile]
The results replace their section of docs/benchmarks.md.
"""

import argparse
import copy
import cProfile
import math
import os
import pstats
import sys
from pathlib import Path

import torch
from torch.nn import functional as F

import pyro
from pyro.infer import SVI

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_section  # noqa: E402
from sampling import (  # noqa: E402
    BATCH_SIZE,
    SCHEDULE,
    TIMESTEPS,
    alternate,
    build_diffusion,
    digit_vectors,
    machine_description,
)

from pyro_diffusion import TimestepELBO, joint_adam  # noqa: E402

try:
    import diffusers
    from diffusers import DDPMScheduler
except ImportError:
    raise SystemExit("diffusers is not installed, and this benchmark needs it: pip install diffusers") from None

LEARNING_RATE = 1e-3
LOG_2PI = math.log(2 * math.pi)


def make_scheduler(diffusion):
    """
    Build a DDPMScheduler with the model's betas. Clipping of the predicted
    x_0 to [-1, 1] (on by default in diffusers 0.42.1) is turned off,
    because the library does not clip and the standardized digits exceed
    that range.
    """
    betas = diffusion.forward_process.schedule.betas[1:]
    return DDPMScheduler(
        num_train_timesteps=len(betas),
        trained_betas=betas.tolist(),
        variance_type="fixed_small",
        clip_sample=False,
    )


class DiffusersStep:
    """
    A training step built on DDPMScheduler.add_noise: the mean squared error
    of the predicted noise at a uniform t, with torch.optim.Adam.
    """

    def __init__(self, net, scheduler):
        self.net = net
        self.scheduler = scheduler
        self.optimizer = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)

    def __call__(self, x0):
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(x0),))
        x_t = self.scheduler.add_noise(x0, noise, t)
        # diffusers numbers the steps 0..T-1, the library's network 1..T.
        loss = F.mse_loss(self.net(x_t, t + 1), noise)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


class PlainBoundStep:
    """
    The estimate of the bound that TimestepELBO computes, written in plain
    PyTorch for the epsilon kernel with the small variance and a Gaussian
    decoder: the prior KL, the KL of one uniformly drawn step t in 2..T
    weighted by T - 1, and log p(x_0 | x_1). It evaluates the network twice
    per example, as the library does.
    """

    def __init__(self, net, schedule):
        self.net = net
        self.num_steps = schedule.num_steps
        self.optimizer = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
        self.alphas_bar = schedule.alphas_bar.float()
        self.sqrt_alphas_bar = schedule.sqrt_alphas_bar.float()
        self.sqrt_one_minus_alphas_bar = schedule.sqrt_one_minus_alphas_bar.float()
        self.noise_coef = schedule.betas.float() / self.sqrt_one_minus_alphas_bar
        self.sqrt_alphas = schedule.sqrt_alphas.float()
        self.log_variance = schedule.log_posterior_variance_clipped.float()
        self.posterior_coef_x0 = schedule.posterior_coef_x0.float()
        self.posterior_coef_xt = schedule.posterior_coef_xt.float()
        # Index 1 is zero and is never read, because the drawn step is at least 2.
        self.log_posterior_variance = schedule.posterior_variance.float().clamp(min=1e-30).log()

    def _reverse_mean(self, x_t, t):
        eps = self.net(x_t, t)
        column = t.unsqueeze(-1)
        return (x_t - self.noise_coef[column] * eps) / self.sqrt_alphas[column]

    def negative_bound(self, x0):
        """Return the negative bound estimate summed over the batch, in nats."""
        T = self.num_steps
        alpha_bar_T = self.alphas_bar[T]
        prior_kl = 0.5 * (alpha_bar_T * x0**2 - alpha_bar_T - torch.log1p(-alpha_bar_T)).sum(-1)

        t = torch.randint(2, T + 1, (len(x0),))
        column = t.unsqueeze(-1)
        x_t = self.sqrt_alphas_bar[column] * x0 + self.sqrt_one_minus_alphas_bar[column] * torch.randn_like(x0)
        loc = self._reverse_mean(x_t, t)
        log_variance = self.log_variance[column]
        posterior_mean = self.posterior_coef_x0[column] * x0 + self.posterior_coef_xt[column] * x_t
        log_posterior_variance = self.log_posterior_variance[column]
        step_kl = 0.5 * (
            log_variance
            - log_posterior_variance
            + (log_posterior_variance.exp() + (posterior_mean - loc) ** 2) / log_variance.exp()
            - 1
        ).sum(-1)

        x_1 = self.sqrt_alphas_bar[1] * x0 + self.sqrt_one_minus_alphas_bar[1] * torch.randn_like(x0)
        decoder_loc = self._reverse_mean(x_1, torch.ones_like(t))
        decoder_log_variance = self.log_variance[1]
        decoder_log_prob = -0.5 * (
            LOG_2PI + decoder_log_variance + (x0 - decoder_loc) ** 2 / decoder_log_variance.exp()
        ).sum(-1)
        return (prior_kl + (T - 1) * step_kl - decoder_log_prob).sum()

    def __call__(self, x0):
        loss = self.negative_bound(x0)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


def diffusers_sampler(net, scheduler, data_dim):
    """
    Build the sampling loop of a diffusers pipeline over ``net``. With
    ``states``, the loop stores the sample after each step under the
    diffusers step number it came from.
    """

    @torch.no_grad()
    def sample(num_samples, generator, states=None):
        scheduler.set_timesteps(scheduler.config.num_train_timesteps)
        x = torch.randn((num_samples, data_dim), generator=generator)
        for t in scheduler.timesteps:
            eps = net(x, t + 1)
            x = scheduler.step(eps, t, x, generator=generator).prev_sample
            if states is not None:
                states[int(t)] = x
        return x

    return sample


def check_bound(diffusion, plain, x0, draws):
    """
    Estimate the bound on one batch ``draws`` times with TimestepELBO and
    with the plain step, both with the library's network.

    :returns: for each, the mean and its standard error in nats per example.
    """
    loss = TimestepELBO()
    library = torch.tensor([loss.loss(diffusion.model, diffusion.guide, x0) for _ in range(draws)])
    with torch.no_grad():
        manual = torch.tensor([float(plain.negative_bound(x0)) for _ in range(draws)])
    summaries = []
    for values in (library, manual):
        values = values / len(x0)
        summaries.append((float(values.mean()), float(values.std() / math.sqrt(draws))))
    return summaries


def check_sampling(diffusion, sampler, seed):
    """
    Compare the library's trajectory with the diffusers loop's for one seed.
    Both draw x_T and the noise of steps T..2 in the same order, so their
    x_1 differ only by rounding. The last step differs by design: diffusers
    returns the mean, the library draws from its decoder.

    :returns: the largest difference of x_1, the root mean square difference
        of x_0 and the decoder's standard deviation.
    """
    library_states = dict(diffusion.sample_steps(BATCH_SIZE, generator=torch.Generator().manual_seed(seed)))
    peer_states = {}
    peer_x0 = sampler(BATCH_SIZE, torch.Generator().manual_seed(seed), peer_states)
    x1_difference = float((library_states[1] - peer_states[1]).abs().max())
    if x1_difference > 0.1:
        raise SystemExit(
            f"the library's x_1 and the diffusers loop's differ by up to {x1_difference:.3g} for the same seed, "
            "more than rounding explains: check that both loops use the same betas, network and time numbering"
        )
    x0_rms = float((library_states[0] - peer_x0).pow(2).mean().sqrt())
    decoder_std = float((0.5 * diffusion.forward_process.schedule.log_posterior_variance_clipped[1]).exp())
    return x1_difference, x0_rms, decoder_std


def time_training(steps, batches, rounds, block_steps):
    """
    Run ``block_steps`` steps of each training step in turn, ``rounds``
    times after one warm-up block each.

    :returns: names to the median seconds per step.
    """

    def block(step):
        def run():
            for i in range(block_steps):
                step(batches[i % len(batches)])

        return run

    medians = alternate({name: block(step) for name, step in steps.items()}, rounds)
    return {name: seconds / block_steps for name, seconds in medians.items()}


def profile_training(step, batches, count=20, lines=30):
    """Print the functions with the most own time in ``count`` library training steps."""
    profiler = cProfile.Profile()
    profiler.enable()
    for i in range(count):
        step(batches[i % len(batches)])
    profiler.disable()
    print(f"\nProfile of {count} library training steps, sorted by own time:")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rounds", type=int, default=10, help="timed blocks of each training step, taken in turn")
    parser.add_argument("--block-steps", type=int, default=10, help="training steps per timed block")
    parser.add_argument("--pairs", type=int, default=5, help="timed sampling runs of each sampler, taken in turn")
    parser.add_argument("--width", type=int, default=256, help="hidden width of the MLP")
    parser.add_argument("--draws", type=int, default=100, help="bound estimates per estimator for the agreement check")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile table (not written to the docs)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_at_start = os.getloadavg()[0]
    pyro.set_rng_seed(0)
    seed = 0
    train, _ = digit_vectors()
    generator = torch.Generator().manual_seed(seed)
    batches = [train[torch.randint(0, len(train), (BATCH_SIZE,), generator=generator)] for _ in range(20)]

    pyro.clear_param_store()
    diffusion = build_diffusion(args.width)
    schedule = diffusion.forward_process.schedule
    scheduler = make_scheduler(diffusion)
    # Each training step gets its own copy of the same initial network.
    peer_step = DiffusersStep(copy.deepcopy(diffusion.reverse.net), scheduler)
    plain_step = PlainBoundStep(copy.deepcopy(diffusion.reverse.net), schedule)
    svi = SVI(diffusion.model, diffusion.guide, joint_adam({"lr": LEARNING_RATE}), loss=TimestepELBO())
    steps = {"library": svi.step, "diffusers": peer_step, "plain": plain_step}
    training = time_training(steps, batches, args.rounds, args.block_steps)
    if args.profile:
        profile_training(svi.step, batches)

    # The checks and the sampling runs use the library's network, trained by the timed SVI steps.
    diffusion.eval()
    checked = PlainBoundStep(diffusion.reverse.net, schedule)
    (library_bound, library_error), (plain_bound, plain_error) = check_bound(
        diffusion, checked, batches[0], args.draws
    )
    sampler = diffusers_sampler(diffusion.reverse.net, scheduler, diffusion.event_shape.numel())
    x1_difference, x0_rms, decoder_std = check_sampling(diffusion, sampler, seed)
    sampling = alternate(
        {
            "library": lambda: diffusion.sample(BATCH_SIZE, generator=torch.Generator().manual_seed(seed)),
            "diffusers": lambda: sampler(BATCH_SIZE, torch.Generator().manual_seed(seed)),
        },
        args.pairs,
    )

    num_tensors = len(list(diffusion.reverse.net.parameters()))
    train_ratio = training["library"] / training["diffusers"]
    plain_ratio = training["library"] / training["plain"]
    sample_ratio = sampling["library"] / sampling["diffusers"]
    trained_steps = (args.rounds + 1) * args.block_steps
    lines = [
        f"Command: `python benchmarks/peer_diffusers.py --rounds {args.rounds} --block-steps {args.block_steps} "
        f"--pairs {args.pairs} --width {args.width} --draws {args.draws}`. Machine: "
        f"{machine_description(load_at_start)}. diffusers {diffusers.__version__}, installed only for this "
        "benchmark.",
        "",
        f"Both sides use the same network (`MLP`, width {args.width}, 3 residual blocks, called directly with no "
        f"UNet2DModel wrapper) and batch {BATCH_SIZE} of the digits' 64 standardized pixels, with T = {TIMESTEPS}. "
        f"The library's {SCHEDULE} schedule goes to `DDPMScheduler` as `trained_betas`, with "
        "`variance_type=\"fixed_small\"` and `clip_sample=False`. By default diffusers clips the predicted x_0 "
        "to [-1, 1], and the library does not clip it. "
        f"Adam with learning rate {LEARNING_RATE} on both sides: the library's `joint_adam` for SVI, one "
        f"`torch.optim.Adam` over all {num_tensors} parameter tensors (stock `pyro.optim.Adam` would keep one per "
        "tensor), and one `torch.optim.Adam` over all parameters for the two plain steps. The steps of a table alternate after one warm-up block (or run) each, and "
        "the tables show medians.",
        "",
        "The losses differ. The diffusers step trains the simple noise loss of Ho et al. (2020), the mean "
        "squared error of the predicted noise at one uniform t, with one network evaluation per example. The "
        "library trains the bound: `TimestepELBO` estimates it from the prior KL, the analytic KL of one uniform "
        "step t in 2..T weighted by T - 1, and the decoder term log p(x_0 | x_1), so it evaluates the network "
        "twice per example (at x_t and at x_1). The third row computes that same estimate in plain PyTorch, which "
        "separates the cost of the loss from the cost of SVI and Pyro's tracing.",
        "",
        f"### Training: time per step ({args.rounds} blocks of {args.block_steps} steps each)",
        "",
        "| training step | loss | network evaluations per example | time per step | library / this |",
        "|---|---|---|---|---|",
        f"| library: `SVI` + `TimestepELBO` | the bound | 2 | {training['library'] * 1e3:.2f} ms | 1.00 |",
        f"| diffusers: `add_noise` + noise MSE | simple noise loss | 1 | {training['diffusers'] * 1e3:.2f} ms "
        f"| {train_ratio:.2f} |",
        f"| plain PyTorch: the bound as `TimestepELBO` computes it | the bound | 2 | {training['plain'] * 1e3:.2f} ms "
        f"| {plain_ratio:.2f} |",
        "",
        f"Check of the third row: on one batch, {args.draws} estimates of the bound averaged "
        f"{library_bound:.3f} +- {library_error:.3f} nats per example with `TimestepELBO` and "
        f"{plain_bound:.3f} +- {plain_error:.3f} with the plain step (+- one standard error). The network was "
        f"the library's after its {trained_steps} timed steps.",
        "",
        f"### Sampling: one run of {BATCH_SIZE} examples through all {TIMESTEPS} steps",
        "",
        "| sampler | time per run | library / this |",
        "|---|---|---|",
        f"| library: `diffusion.sample` | {sampling['library']:.3f} s | 1.00 |",
        f"| diffusers: `DDPMScheduler.step` loop | {sampling['diffusers']:.3f} s | {sample_ratio:.3f} |",
        "",
        f"Both loops draw x_T and the noise of every step but the last from one seeded generator in the same "
        f"order. Their x_1 differed by at most {x1_difference:.2g}. That is rounding: diffusers keeps its schedule "
        "in float32 and forms the mean through the predicted x_0, the library uses float64 tables and the noise "
        "form of the mean, and the differences accumulate over the steps. At the last step diffusers returns "
        f"the mean and the library draws from its decoder, whose standard deviation is {decoder_std:.4f}, and the "
        f"samples differed by {x0_rms:.4f} (root mean square).",
        "",
        f"Target: the library no slower than diffusers with the same network, batch and T. Training: "
        f"{'met' if train_ratio <= 1 else 'missed'} ({train_ratio:.2f}x the diffusers step, which evaluates the "
        f"network half as often and trains a different loss, and "
        f"{plain_ratio:.2f}x the same bound in plain PyTorch). Sampling: {'met' if sample_ratio <= 1 else 'missed'} ({sample_ratio:.3f}x).",
    ]
    write_section("Performance: against diffusers", "\n".join(lines))
    print("\n".join(lines))
    print(
        f"headline: library / diffusers time per step: training {train_ratio:.2f} "
        f"(same bound in plain PyTorch: {plain_ratio:.2f}), sampling {sample_ratio:.3f} (target <= 1)"
    )


if __name__ == "__main__":
    main()
