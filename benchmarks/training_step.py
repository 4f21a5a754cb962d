"""
The cost of one SVI training step of the library against a hand-written
PyTorch step that computes the same bound estimate.

The library step is stock ``pyro.infer.SVI`` with ``TimestepELBO`` (uniform
time steps), ``EpsilonReverse(variance="small")`` and either the library's
``joint_adam`` (one ``torch.optim.Adam`` for all parameters) or
``pyro.optim.Adam`` (one ``torch.optim.Adam`` per parameter tensor).
The hand-written step computes the same terms with plain tensor operations
on the same network object, batch and data, and updates the network with
one ``torch.optim.Adam``. After the timed steps, the script feeds both the
library's own random draws and checks that their losses and gradients agree.

Timings alternate the steps under comparison (A, B, A, B, ...) after a
warm-up in one process and report medians. The script also times the
library step at several T, the full-trajectory ``Trace_ELBO`` step (with
and without ``JitTrace_ELBO``), and the peak resident memory of a few
U-Net training steps, each step kind in a fresh subprocess.

Usage: python benchmarks/training_step.py [--rounds 100] [--unet-rounds 16] [--trace-rounds 6] [--profile-steps 100]
The tables replace their section of docs/benchmarks.md. The last line
printed is the headline ratio.
"""

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

import pyro
from pyro import poutine
from pyro.infer import SVI, JitTrace_ELBO, Trace_ELBO
from pyro.optim import Adam

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_section  # noqa: E402

from pyro_diffusion import (  # noqa: E402
    MLP, BetaSchedule, DiffusionModel, EpsilonReverse, GaussianForward, TimestepELBO, UNet,
)
from pyro_diffusion.data import load_digits_split  # noqa: E402
from pyro_diffusion.optim import joint_adam  # noqa: E402

LEARNING_RATE = 1e-4
#: The optimizers of the library step: a name and a factory taking Adam's arguments.
OPTIMIZERS = {
    "joint_adam": joint_adam,
    "pyro.optim.Adam": Adam,
}
BATCH_SIZE = 128
MEMORY_BATCH_SIZE = 256
IMAGE_SHAPE = (1, 28, 28)
#: The schedule tables the hand-written step reads, each indexed by t = 0..T.
TABLE_NAMES = (
    "alphas_bar",
    "one_minus_alphas_bar",
    "sqrt_alphas_bar",
    "sqrt_one_minus_alphas_bar",
    "betas",
    "sqrt_alphas",
    "posterior_coef_x0",
    "posterior_coef_xt",
    "posterior_variance",
    "log_posterior_variance_clipped",
)


class HandWrittenStep:
    """
    One training step of the estimate that ``TimestepELBO`` computes with
    uniform time steps, written with tensor operations and one
    ``torch.optim.Adam`` over the network's parameters.

    The estimate per example is the prior term ``-KL(q(x_T | x_0) || N(0, I))``,
    the diffusion term ``-KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))``
    at one step ``t`` drawn uniformly from ``2..T`` and weighted by ``T - 1``,
    and the decoder term ``log p(x_0 | x_1)``, with ``x_t`` and ``x_1`` drawn
    from the forward marginals. The loss is its negative sum over examples.
    """

    def __init__(self, schedule, net, event_shape, learning_rate=LEARNING_RATE):
        self.num_steps = schedule.num_steps
        self.net = net
        self.event_shape = torch.Size(event_shape)
        self.event_dims = tuple(range(1, len(self.event_shape) + 1))
        dtype = next(net.parameters()).dtype
        # A hand-written trainer keeps the constants in the network's dtype,
        # as the library's lookups return them.
        self.tables = {name: getattr(schedule, name).to(dtype) for name in TABLE_NAMES}
        self.optimizer = torch.optim.Adam(net.parameters(), lr=learning_rate)

    def _at(self, name, t):
        """Look up a table at the steps ``t`` and shape the values ``[N, 1, ...]`` to broadcast against the data."""
        return self.tables[name][t].reshape((-1,) + (1,) * len(self.event_shape))

    def draw(self, x0):
        """Draw ``t`` uniformly from ``2..T``, ``x_t ~ q(x_t | x_0)`` and ``x_1 ~ q(x_1 | x_0)``."""
        t = torch.randint(2, self.num_steps + 1, (x0.shape[0],), device=x0.device)
        noise_t = torch.randn_like(x0)
        x_t = self._at("sqrt_alphas_bar", t) * x0 + self._at("sqrt_one_minus_alphas_bar", t) * noise_t
        noise_1 = torch.randn_like(x0)
        x_1 = self.tables["sqrt_alphas_bar"][1] * x0 + self.tables["sqrt_one_minus_alphas_bar"][1] * noise_1
        return t, x_t, x_1

    def _reverse_mean(self, x, t):
        """Compute the mean of ``p(x_{t-1} | x_t)`` from the predicted noise."""
        noise = self.net(x.reshape(x.shape[0], -1), t).reshape(x.shape)
        coefficient = self._at("betas", t) / self._at("sqrt_one_minus_alphas_bar", t)
        return (x - coefficient * noise) / self._at("sqrt_alphas", t)

    def loss(self, x0, t, x_t, x_1):
        """Return the negative bound estimate summed over examples, in nats."""
        T = self.num_steps
        # Prior term: the KL of q(x_T | x_0) to N(0, I).
        signal = self.tables["alphas_bar"][T]
        noise_variance = self.tables["one_minus_alphas_bar"][T]
        prior_kl = 0.5 * (signal * x0.pow(2) + noise_variance - 1 - noise_variance.log()).sum(self.event_dims)

        # Diffusion term at step t: the KL of the forward posterior to the reverse kernel.
        posterior_mean = self._at("posterior_coef_x0", t) * x0 + self._at("posterior_coef_xt", t) * x_t
        posterior_variance = self._at("posterior_variance", t)
        log_variance = self._at("log_posterior_variance_clipped", t)
        difference = posterior_mean - self._reverse_mean(x_t, t)
        step_kl = 0.5 * (
            log_variance - posterior_variance.log()
            + (posterior_variance + difference.pow(2)) * torch.exp(-log_variance)
            - 1
        ).sum(self.event_dims)

        # Decoder term: log N(x_0; mean of p(x_0 | x_1), the variance clipped at t = 1).
        ones = torch.ones_like(t)
        decoder_log_variance = self.tables["log_posterior_variance_clipped"][1]
        residual = x0 - self._reverse_mean(x_1, ones)
        log_likelihood = (
            -0.5 * residual.pow(2) * torch.exp(-decoder_log_variance)
            - 0.5 * decoder_log_variance
            - 0.5 * math.log(2 * math.pi)
        ).sum(self.event_dims)

        return (prior_kl + (T - 1) * step_kl - log_likelihood).sum()

    def step(self, x0):
        """Take one Adam step on a fresh draw and return the loss as a float."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(x0, *self.draw(x0))
        loss.backward()
        self.optimizer.step()
        # SVI.step leaves no gradients for the next step to add to, so this step clears them as well.
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()


class Case:
    """One network and data set: the library model, its SVI and the hand-written step."""

    def __init__(self, network, label, schedule, net, event_shape, batch, elbo=None, optimizer="joint_adam"):
        self.network = network
        self.optimizer = optimizer
        self.label = label
        self.net = net
        self.batch = batch
        forward = GaussianForward(schedule, event_dim=len(event_shape))
        self.diffusion = DiffusionModel(forward, EpsilonReverse(forward, net, event_shape, variance="small"))
        self.svi = SVI(
            self.diffusion.model, self.diffusion.guide, OPTIMIZERS[optimizer]({"lr": LEARNING_RATE}),
            elbo if elbo is not None else TimestepELBO(),
        )
        self.hand = HandWrittenStep(schedule, net, event_shape)

    def library_step(self):
        return self.svi.step(self.batch)

    def hand_step(self):
        return self.hand.step(self.batch)


def digits_batch(batch_size):
    """Draw a fixed minibatch of the 8x8 digits as 64-D vectors, scaled to mean 0 and variance 1."""
    train, _ = load_digits_split()
    x = train.reshape(len(train), -1).float()
    x = (x - x.mean()) / x.std()
    index = torch.randint(0, len(x), (batch_size,), generator=torch.Generator().manual_seed(1))
    return x[index]


MLP_DEFAULT_SIZE = "width 256, 3 blocks"
MLP_SMALL_SIZE = "width 16, 1 block"
#: The digits' default MLP, and a small one whose step is mostly Pyro's per-site work.
MLP_SIZES = {MLP_DEFAULT_SIZE: (256, 3), MLP_SMALL_SIZE: (16, 1)}


def mlp_case(num_steps, batch_size=BATCH_SIZE, elbo=None, size=MLP_DEFAULT_SIZE, optimizer="joint_adam"):
    """Build an MLP of one of ``MLP_SIZES`` on 64-D digits, trained with one of ``OPTIMIZERS``."""
    torch.manual_seed(0)
    schedule = BetaSchedule.from_name("paper", num_steps)
    hidden_dim, num_blocks = MLP_SIZES[size]
    net = MLP(64, 64, num_steps, hidden_dim=hidden_dim, num_blocks=num_blocks)
    label = f"MLP ({size}), 64-D digits, T = {num_steps}"
    return Case("MLP", label, schedule, net, (64,), digits_batch(batch_size), elbo, optimizer)


def unet_case(num_steps, batch_size=BATCH_SIZE):
    """
    Build the U-Net with 16 channels on 1x28x28 images.

    The images are standard normal noise, because the cost of a step does not
    depend on the pixel values and no data set then needs to be read.
    """
    torch.manual_seed(0)
    schedule = BetaSchedule.from_name("paper", num_steps)
    net = UNet(IMAGE_SHAPE, 1, num_steps, channels=16)
    batch = torch.randn((batch_size,) + IMAGE_SHAPE, generator=torch.Generator().manual_seed(1))
    return Case("U-Net", f"U-Net (16 channels), 1x28x28, T = {num_steps}", schedule, net, IMAGE_SHAPE, batch)


def check_same_estimate(case):
    """
    Evaluate the library's loss and gradient once, then the hand-written
    loss and gradient on the same draws. Return both losses and the
    relative differences of the losses and of the gradients.
    """
    elbo = TimestepELBO()
    recorded = {}
    library_traces = elbo._traces

    def recording_traces(*args, **kwargs):
        recorded["traces"] = library_traces(*args, **kwargs)
        return recorded["traces"]

    # The wrapper only records the traces the library's own estimate uses.
    elbo._traces = recording_traces
    parameters = list(case.net.parameters())

    library_loss = elbo.differentiable_loss(case.diffusion.model, case.diffusion.guide, case.batch)
    library_gradient = torch.autograd.grad(library_loss, parameters)
    handler = recorded["traces"][2]
    draws = (handler.t,) + handler.states(case.batch)
    hand_loss = case.hand.loss(case.batch, *draws)
    hand_gradient = torch.autograd.grad(hand_loss, parameters)

    library_loss, hand_loss = library_loss.item(), hand_loss.item()
    loss_difference = abs(library_loss - hand_loss) / abs(library_loss)
    flat_library = torch.cat([g.reshape(-1) for g in library_gradient])
    flat_hand = torch.cat([g.reshape(-1) for g in hand_gradient])
    gradient_difference = float((flat_library - flat_hand).norm() / flat_library.norm())
    return library_loss, hand_loss, loss_difference, gradient_difference


def alternate(steps, rounds, warmup, block=1):
    """
    Time the callables in turn, A, B, ..., A, B, ..., with ``warmup`` untimed
    rounds first, and return one list per callable of its seconds per call
    in each round. ``block`` calls form one timed sample.
    """
    for _ in range(warmup):
        for step in steps:
            step()
    samples = [[] for _ in steps]
    for _ in range(rounds):
        for step, times in zip(steps, samples):
            start = time.perf_counter()
            for _ in range(block):
                step()
            times.append((time.perf_counter() - start) / block)
    return samples


def medians(samples):
    return [statistics.median(times) for times in samples]


def network_chain(case, num_calls):
    """
    Return a callable that evaluates the case's network ``num_calls`` times
    on its batch, at the steps ``T, T - 1, ...``, and runs one backward pass
    through all of them, as one full-trajectory loss does.
    """
    x = case.batch.reshape(case.batch.shape[0], -1)
    steps = [torch.full((x.shape[0],), case.diffusion.num_steps - i) for i in range(num_calls)]

    def run():
        case.net.zero_grad(set_to_none=True)
        total = sum(case.net(x, t).pow(2).sum() for t in steps)
        total.backward()
        case.net.zero_grad(set_to_none=True)

    return run


def compare_with_hand_written(case, rounds, warmup, block):
    library_times, hand_times = alternate([case.library_step, case.hand_step], rounds, warmup, block)
    # The check runs after the timed steps: a new network's readout is zero,
    # so only the readout would have a nonzero gradient before them.
    library_loss, hand_loss, loss_difference, gradient_difference = check_same_estimate(case)
    library_seconds, hand_seconds = medians([library_times, hand_times])
    # The spread of the per-round ratios shows how noisy the machine was.
    quartiles = statistics.quantiles([a / b for a, b in zip(library_times, hand_times)], n=4)
    return {
        "network": case.network,
        "optimizer": case.optimizer,
        "label": case.label,
        "library_loss": library_loss,
        "hand_loss": hand_loss,
        "loss_difference": loss_difference,
        "gradient_difference": gradient_difference,
        "library_ms": library_seconds * 1e3,
        "hand_ms": hand_seconds * 1e3,
        "ratio": library_seconds / hand_seconds,
        "round_ratio_quartiles": quartiles,
        "rounds": rounds,
        "block": block,
    }


def gap_breakdown(case, rounds, warmup=5):
    """
    Time the parts of the library step beside their hand-written
    counterparts, alternating, and return the medians in ms. The parts are
    the forward pass of each loss without gradients, the network's two
    evaluations alone, the registration of the network's parameters as
    param sites of a trace, and the library step with Pyro's validation off.
    """
    diffusion, hand, batch = case.diffusion, case.hand, case.batch
    elbo = TimestepELBO()
    flat = batch.reshape(batch.shape[0], -1)
    steps = torch.randint(2, diffusion.num_steps + 1, (batch.shape[0],))
    ones = torch.ones_like(steps)

    def library_forward():
        with torch.no_grad():
            elbo.differentiable_loss(diffusion.model, diffusion.guide, batch)

    def hand_forward():
        with torch.no_grad():
            hand.loss(batch, *hand.draw(batch))

    def network_only():
        with torch.no_grad():
            case.net(flat, steps)
            case.net(flat, ones)

    def registration():
        with poutine.trace(param_only=True):
            diffusion._register()

    def step_without_validation():
        pyro.enable_validation(False)
        try:
            case.library_step()
        finally:
            pyro.enable_validation(True)

    parts = [library_forward, hand_forward, network_only, registration, case.library_step,
             step_without_validation, case.hand_step]
    names = ["library_forward", "hand_forward", "network", "registration", "library_step",
             "library_step_no_validation", "hand_step"]
    seconds = medians(alternate(parts, rounds, warmup, block=3))
    return {name: s * 1e3 for name, s in zip(names, seconds)} | {
        "num_parameters": sum(1 for _ in case.net.parameters()),
    }


def growth_with_timesteps(timesteps, rounds, warmup, block):
    cases = [mlp_case(num_steps) for num_steps in timesteps]
    seconds = medians(alternate([case.library_step for case in cases], rounds, warmup, block))
    return [(num_steps, s * 1e3) for num_steps, s in zip(timesteps, seconds)]


def full_trajectory(size, timesteps, rounds, warmup):
    """
    Time Trace_ELBO on the full model/guide pair at each T, beside the same
    number of network evaluations as the smallest T without Pyro. Return the
    rows, the added cost per time step and the network's share of it, in ms.
    """
    cases = [mlp_case(num_steps, elbo=Trace_ELBO(), size=size) for num_steps in timesteps]
    low, high = timesteps[0], timesteps[-1]
    steps = [case.library_step for case in cases] + [network_chain(cases[0], low)]
    seconds = medians(alternate(steps, rounds, warmup))
    trace_ms = [s * 1e3 for s in seconds[:-1]]
    network_ms = seconds[-1] * 1e3 / low
    per_step_ms = (trace_ms[-1] - trace_ms[0]) / (high - low)
    return {
        "size": size,
        "rows": list(zip(timesteps, trace_ms)),
        "per_step_ms": per_step_ms,
        "network_ms": network_ms,
    }


def jit_trace(size, num_steps, rounds, warmup=3):
    """
    Time JitTrace_ELBO against Trace_ELBO at one T, or return the error that
    stopped it. The first ``warmup`` JIT steps trace the program and let
    PyTorch's profiling executor optimize it, and are timed separately.
    """
    plain = mlp_case(num_steps, elbo=Trace_ELBO(), size=size)
    jit = mlp_case(num_steps, elbo=JitTrace_ELBO(), size=size)

    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            # The tracer warns about every Python-side check in the model, and
            # PyTorch 2.14 warns that torch.jit.trace is deprecated.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", FutureWarning)
            for _ in range(warmup):
                jit.library_step()
    except Exception as error:  # noqa: BLE001 - any failure of the JIT is the result reported
        message = str(error).strip().splitlines()
        error_line = f"{type(error).__name__}: {message[0] if message else ''}"[:300]
        return {"size": size, "num_steps": num_steps, "error": error_line}
    warmup_seconds = time.perf_counter() - start

    plain_seconds, jit_seconds = medians(alternate([plain.library_step, jit.library_step], rounds, warmup=1))
    return {
        "size": size,
        "num_steps": num_steps,
        "warmup_steps": warmup,
        "warmup_s": warmup_seconds,
        "plain_ms": plain_seconds * 1e3,
        "jit_ms": jit_seconds * 1e3,
    }


def peak_resident_mib():
    """
    Return the peak resident set size of this process image (``VmHWM`` in
    /proc/self/status, Linux only), in MiB.

    ``ru_maxrss`` would do, except that Linux carries it over from the
    parent through fork and exec, so a child of a large parent would start
    at the parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM is missing from /proc/self/status: the memory measurement needs Linux")


def measure_memory_child(kind, num_steps, steps):
    """Run in a fresh process: build the U-Net case, train a few steps and print the memory as JSON."""
    torch.set_num_threads(1)
    pyro.set_rng_seed(0)
    case = unet_case(num_steps, MEMORY_BATCH_SIZE)
    step = case.library_step if kind == "library" else case.hand_step
    baseline = peak_resident_mib()
    for _ in range(steps):
        step()
    print(json.dumps({"kind": kind, "baseline_mib": baseline, "peak_mib": peak_resident_mib()}))


def measure_memory(num_steps, steps):
    results = {}
    for kind in ("library", "hand"):
        command = [
            sys.executable, str(Path(__file__).resolve()), "--memory-child", kind,
            "--memory-timesteps", str(num_steps), "--memory-steps", str(steps),
        ]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[kind] = json.loads(output.strip().splitlines()[-1])
    return results


#: The components a profiled step's time is split into, matched on the file of each function (first match wins).
PROFILE_COMPONENTS = (
    ("autograd engine (backward pass)", lambda path, name: "run_backward" in name),
    ("PyTorch operators (forward pass)", lambda path, name: path == "~" and "torch" in name),
    ("torch.nn module calls (Python)", lambda path, name: "/torch/nn/" in path),
    ("torch.optim (Python)", lambda path, name: "/torch/optim/" in path or "/pyro/optim/" in path),
    ("torch.distributions (Python)", lambda path, name: "/torch/distributions/" in path),
    ("Pyro: traces, handlers, param store, SVI", lambda path, name: "/pyro/" in path),
    ("pyro_diffusion (Python)", lambda path, name: "/pyro_diffusion/" in path),
    ("hand-written step (Python)", lambda path, name: "/benchmarks/" in path),
)


def profile_by_component(step, steps):
    """
    Run ``step`` ``steps`` times under cProfile and return the milliseconds
    per step of each of ``PROFILE_COMPONENTS`` (plus "other"), from each
    function's own time. The profiler adds a cost per Python call, so the
    Python rows are inflated against a plain run.
    """
    import cProfile
    import pstats

    for _ in range(5):
        step()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        step()
    profiler.disable()
    totals = {label: 0.0 for label, _ in PROFILE_COMPONENTS}
    totals["other"] = 0.0
    for (path, _, name), (_, _, own_seconds, _, _) in pstats.Stats(profiler).stats.items():
        label = next((label for label, match in PROFILE_COMPONENTS if match(path, name)), "other")
        totals[label] += own_seconds * 1e3 / steps
    return totals


def verdict(met):
    return "met" if met else "missed"


def command_line(args):
    parts = [
        "python benchmarks/training_step.py",
        f"--rounds {args.rounds}",
        f"--unet-rounds {args.unet_rounds}",
        f"--trace-rounds {args.trace_rounds}",
        f"--memory-steps {args.memory_steps}",
        f"--profile-steps {args.profile_steps}",
    ]
    if args.skip_unet:
        parts.append("--skip-unet")
    return " ".join(parts)


def comparison_lines(args, comparisons, load_average, total_seconds):
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"pyro {pyro.__version__}, one PyTorch thread"
    )
    lines = [
        f"Command: `{command_line(args)}`. Machine: {machine}. The run took {total_seconds / 60:.1f} min, "
        f"and the one-minute load average was {load_average:.2f} when it started.",
        "",
        "The library step is `SVI(diffusion.model, diffusion.guide, optimizer, TimestepELBO())` "
        "with uniform time steps and `EpsilonReverse(..., variance=\"small\")`. The optimizer is the "
        "library's `pyro_diffusion.optim.joint_adam`, one `torch.optim.Adam` over all parameters (what "
        "`Trainer` uses, with Pyro's clipped Adam update), or stock `pyro.optim.Adam`, one "
        "`torch.optim.Adam` per parameter tensor; both give bit-identical parameters. The hand-written step "
        "computes the same estimate with tensor operations on the same network object and batch: "
        "the analytic KL of q(x_T | x_0) to N(0, I), the analytic KL of q(x_{t-1} | x_t, x_0) to the "
        "reverse kernel at one t per example drawn uniformly from 2..T and weighted by T - 1, and "
        "log p(x_0 | x_1) with x_1 ~ q(x_1 | x_0). It updates the network with one `torch.optim.Adam`. "
        f"Both use the paper schedule and batch {BATCH_SIZE}. The two steps alternate in one process "
        "after a warm-up, and each time is the median over rounds. The MLP rounds time "
        f"{comparisons[0]['block']} steps each and the U-Net rounds one step. The U-Net's images are "
        "standard normal noise, since the cost of a step does not depend on the pixel values.",
        "",
        "| network and data | library optimizer | library step | hand-written step | ratio of medians "
        "| per-round ratio: median (quartiles) | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in comparisons:
        low, middle, high = row["round_ratio_quartiles"]
        lines.append(
            f"| {row['label']} | `{row['optimizer']}` | {row['library_ms']:.2f} ms | {row['hand_ms']:.2f} ms | {row['ratio']:.3f} "
            f"| {middle:.3f} ({low:.3f} to {high:.3f}) | <= 1.10, {verdict(row['ratio'] <= 1.10)} |"
        )
    lines.append("")
    for row in comparisons:
        lines.append(
            f"Same draws, {row['label']}, `{row['optimizer']}`: library loss {row['library_loss']:.6g} nats, hand-written "
            f"{row['hand_loss']:.6g} (relative difference {row['loss_difference']:.1e}). The relative "
            f"difference of the network gradients is {row['gradient_difference']:.1e}."
        )
    return lines


def breakdown_lines(case, breakdown):
    b = breakdown
    gap = b["library_step"] - b["hand_step"]
    forward_gap = (b["library_forward"] - b["network"]) - (b["hand_forward"] - b["network"])
    validation = b["library_step"] - b["library_step_no_validation"]
    return [
        "",
        f"Where the gap goes, {case.label}, `{case.optimizer}`: medians of the parts below, alternating "
        "with each other in one process. The forward rows evaluate each loss once without gradients; "
        "the network row is the two network evaluations of one estimate alone.",
        "",
        "| part | median |",
        "|---|---|",
        f"| library step | {b['library_step']:.2f} ms |",
        f"| library step, Pyro's validation off | {b['library_step_no_validation']:.2f} ms |",
        f"| hand-written step | {b['hand_step']:.2f} ms |",
        f"| library loss, forward only | {b['library_forward']:.2f} ms |",
        f"| hand-written loss, forward only | {b['hand_forward']:.2f} ms |",
        f"| the network's two evaluations | {b['network']:.2f} ms |",
        f"| registering the {b['num_parameters']} parameter tensors as param sites | {b['registration']:.2f} ms |",
        "",
        f"Of the {gap:.2f} ms between the steps, {forward_gap:.2f} ms is the forward pass outside the "
        "network: Pyro's traces of the model and guide, the distribution objects and the KL dispatch. "
        f"Registering the parameter tensors as one param site each, which SVI needs to find them, takes "
        f"{b['registration']:.2f} ms of it. Turning Pyro's argument validation off (it is on by default) changed the step by "
        f"{-validation:+.2f} ms. The rest is the backward pass through the larger graph and SVI's own "
        "bookkeeping; the profile below splits the whole step by component.",
    ]


def profile_lines(args, case, profile):
    library, hand = profile["library"], profile["hand"]
    lines = [
        "",
        f"Profile, {case.label}, `{case.optimizer}`: {args.profile_steps} steps of each kind under cProfile, "
        "each function's own time summed by where it lives, in ms per step. The profiler's cost per "
        "Python call inflates the Python rows against the timings above.",
        "",
        "| where | library step | hand-written step | difference |",
        "|---|---|---|---|",
    ]
    for label in library:
        if library[label] < 0.005 and hand[label] < 0.005:
            continue
        lines.append(
            f"| {label} | {library[label]:.2f} | {hand[label]:.2f} | {library[label] - hand[label]:+.2f} |"
        )
    lines.append(
        f"| total | {sum(library.values()):.2f} | {sum(hand.values()):.2f} "
        f"| {sum(library.values()) - sum(hand.values()):+.2f} |"
    )
    return lines


def growth_lines(growth, trajectories, jits):
    growth_ratio = max(ms for _, ms in growth) / min(ms for _, ms in growth)
    lines = [
        "",
        f"Growth with T (64-D digits, batch {BATCH_SIZE}). The TimestepELBO rows alternate with each other. "
        "The Trace_ELBO rows of one network alternate with each other and with the same network "
        "evaluated as often as at the smallest T, without Pyro, in one graph with one backward pass. "
        "Each JitTrace_ELBO row alternates with a Trace_ELBO step of the same network.",
        "",
        "| estimator | network | T | median step |",
        "|---|---|---|---|",
    ]
    for num_steps, ms in growth:
        lines.append(f"| TimestepELBO | MLP ({MLP_DEFAULT_SIZE}) | {num_steps} | {ms:.2f} ms |")
    for trajectory in trajectories:
        for num_steps, ms in trajectory["rows"]:
            lines.append(
                f"| Trace_ELBO, full model/guide pair | MLP ({trajectory['size']}) | {num_steps} | {ms:.1f} ms |"
            )
    for jit in jits:
        if "error" not in jit:
            lines.append(
                f"| JitTrace_ELBO, full model/guide pair | MLP ({jit['size']}) | {jit['num_steps']} "
                f"| {jit['jit_ms']:.1f} ms |"
            )
    lines += [
        "",
        f"The slowest TimestepELBO step is {growth_ratio:.3f} times the fastest "
        f"(target: within 10%, {verdict(growth_ratio <= 1.10)}).",
    ]
    for trajectory in trajectories:
        low, high = trajectory["rows"][0][0], trajectory["rows"][-1][0]
        per_site_ms = (trajectory["per_step_ms"] - trajectory["network_ms"]) / 2
        lines.append(
            f"MLP ({trajectory['size']}): the full trajectory costs {trajectory['per_step_ms']:.2f} ms per "
            f"time step between T = {low} and {high}, for one model site, one guide site and one network "
            f"evaluation. The network's forward and backward pass takes {trajectory['network_ms']:.2f} ms of "
            f"that, which leaves about {per_site_ms:.2f} ms per site."
        )
    for jit in jits:
        if "error" in jit:
            lines.append(
                f"`JitTrace_ELBO` with the MLP ({jit['size']}) at T = {jit['num_steps']} failed: {jit['error']}"
            )
            continue
        lines.append(
            f"`JitTrace_ELBO` with the MLP ({jit['size']}) at T = {jit['num_steps']} took {jit['jit_ms']:.1f} ms "
            f"per step against {jit['plain_ms']:.1f} ms for `Trace_ELBO` (ratio "
            f"{jit['jit_ms'] / jit['plain_ms']:.2f}). Its first {jit['warmup_steps']} steps, which trace "
            f"the program and let PyTorch's profiling executor optimize it, took {jit['warmup_s']:.1f} s "
            "together and are not in the median."
        )
    return lines


def memory_lines(args, memory):
    library_memory = memory["library"]["peak_mib"] - memory["library"]["baseline_mib"]
    hand_memory = memory["hand"]["peak_mib"] - memory["hand"]["baseline_mib"]
    memory_ratio = library_memory / hand_memory
    lines = [
        "",
        f"Peak memory: {args.memory_steps} training steps of the U-Net (16 channels) on 1x28x28 images at "
        f"batch {MEMORY_BATCH_SIZE}, T = {args.memory_timesteps}, each step kind in a fresh process. The "
        "increment is the peak resident set size of the process (`VmHWM` in /proc/self/status) after "
        "the steps minus its value after the imports and the construction of the model, optimizer "
        "and data.",
        "",
        "| step | resident after construction | peak resident | increment |",
        "|---|---|---|---|",
    ]
    for kind, label in (("library", "library"), ("hand", "hand-written")):
        row = memory[kind]
        lines.append(
            f"| {label} | {row['baseline_mib']:.0f} MiB | {row['peak_mib']:.0f} MiB | "
            f"{row['peak_mib'] - row['baseline_mib']:.0f} MiB |"
        )
    lines += [
        "",
        f"Increment ratio (library / hand-written): {memory_ratio:.3f} (target: at most 1.2, "
        f"{verdict(memory_ratio <= 1.2)}).",
    ]
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100, help="timed rounds per MLP comparison")
    parser.add_argument("--unet-rounds", type=int, default=16, help="timed rounds of the U-Net comparison")
    parser.add_argument(
        "--trace-rounds", type=int, default=6,
        help="timed rounds of the Trace_ELBO steps with the large MLP (four times as many with the small one)",
    )
    parser.add_argument("--memory-steps", type=int, default=3, help="training steps per memory measurement")
    parser.add_argument(
        "--memory-timesteps", type=int, default=1000, help="the number of diffusion steps T in the memory measurement"
    )
    parser.add_argument("--skip-unet", action="store_true", help="skip the U-Net timing comparison")
    parser.add_argument("--profile-steps", type=int, default=100, help="steps of each kind under cProfile")
    parser.add_argument("--memory-child", choices=["library", "hand"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)

    if args.memory_child is not None:
        measure_memory_child(args.memory_child, args.memory_timesteps, args.memory_steps)
        return
    pyro.set_rng_seed(0)
    started = time.perf_counter()
    load_average = os.getloadavg()[0]

    # 1. The library step against the hand-written step.
    comparisons = [
        compare_with_hand_written(mlp_case(1000, optimizer=name), args.rounds, warmup=5, block=3)
        for name in OPTIMIZERS
    ]
    if not args.skip_unet:
        comparisons.append(compare_with_hand_written(unet_case(1000), args.unet_rounds, warmup=2, block=1))
    breakdown_case = mlp_case(1000)
    breakdown = gap_breakdown(breakdown_case, args.rounds)
    print("breakdown:", breakdown, flush=True)
    for row in comparisons:
        print(
            f"{row['label']}, {row['optimizer']}: library {row['library_ms']:.2f} ms, hand-written {row['hand_ms']:.2f} ms, "
            f"ratio {row['ratio']:.3f}",
            flush=True,
        )

    # 2. Growth with T, and the full trajectory for reference.
    growth = growth_with_timesteps([40, 1000, 4000], args.rounds, warmup=5, block=3)
    print("TimestepELBO step by T:", ", ".join(f"T = {t}: {ms:.2f} ms" for t, ms in growth), flush=True)
    trajectories = []
    jits = []
    for size, rounds in ((MLP_DEFAULT_SIZE, args.trace_rounds), (MLP_SMALL_SIZE, 4 * args.trace_rounds)):
        trajectories.append(full_trajectory(size, [40, 200], rounds, warmup=1))
        print("Trace_ELBO:", trajectories[-1], flush=True)
        jits.append(jit_trace(size, 40, rounds))
        print("JitTrace_ELBO:", jits[-1], flush=True)

    # 3. Peak memory, each step kind in a fresh process.
    memory = measure_memory(args.memory_timesteps, args.memory_steps)
    print("memory:", memory, flush=True)
    total_seconds = time.perf_counter() - started

    profile_case = mlp_case(1000)
    profile = {
        "library": profile_by_component(profile_case.library_step, args.profile_steps),
        "hand": profile_by_component(profile_case.hand_step, args.profile_steps),
    }
    print("profile:", profile, flush=True)

    lines = comparison_lines(args, comparisons, load_average, total_seconds)
    lines += breakdown_lines(breakdown_case, breakdown)
    lines += profile_lines(args, profile_case, profile)
    lines += growth_lines(growth, trajectories, jits)
    lines += memory_lines(args, memory)
    write_section("Performance: training step", "\n".join(lines))
    print("\n".join(lines))
    joint = [row for row in comparisons if row["optimizer"] == "joint_adam"]
    worst = max(row["ratio"] for row in joint)
    details = ", ".join(f"{row['network']} {row['ratio']:.2f}" for row in joint)
    stock = ", ".join(f"{row['network']} {row['ratio']:.2f}" for row in comparisons if row["optimizer"] != "joint_adam")
    print(
        f"training step ratio (library with joint_adam / hand-written): {worst:.2f} ({details}); "
        f"with pyro.optim.Adam: {stock}"
    )


if __name__ == "__main__":
    main()
