r"""
Posterior sampling from a trained Gaussian diffusion model given an
observation of some coordinates of :math:`x_0`, exact (inpainting) or with
Gaussian noise (denoising):

.. math::

    y_i = x_{0,i} + \sigma \epsilon_i, \quad i \in M, \qquad \sigma \ge 0,

where the mask :math:`M` (``True`` = observed) selects the observed
coordinates. Two samplers run the reverse chain:

- :func:`product_sample`, the per-step product of [1], Section 2.5: every
  reverse step is multiplied by a factor of the observation at the step's
  noise level and renormalized. It is a heuristic, not an exact posterior
  sampler.
- :func:`smc_sample`, sequential Monte Carlo over the reverse chain with
  twisting functions (in the manner of [2]), exact as the number of
  particles grows, which also estimates the log marginal likelihood
  :math:`\log p(y)`.

Both use, at level ``t``, the factor of the observation that the forward
process gives when :math:`x_0` is the observation itself,

.. math::

    \psi_t(x_t) = \prod_{i \in M} \mathcal{N}\left(\sqrt{\bar\alpha_t}\, y_i;\;
        x_{t,i},\; c_t\right), \qquad c_t = \bar\alpha_t \sigma^2 + 1 - \bar\alpha_t,

with :math:`\psi_0(x_0) = \prod_{i \in M} \mathcal{N}(y_i; x_{0,i}, \sigma^2)`,
the exact likelihood (a point mass when :math:`\sigma = 0`). A Gaussian
reverse step times a Gaussian factor is Gaussian with a precision-weighted
mean, so both samplers draw each step in closed form.

Shapes: the observation ``values`` have shape ``[N] + event_shape`` on the
model's scale; the mask broadcasts to it.

References

[1] J. Sohl-Dickstein et al., "Deep Unsupervised Learning using
    Nonequilibrium Thermodynamics", 2015.
[2] L. Wu, B. L. Trippe, C. A. Naesseth, D. M. Blei, J. P. Cunningham,
    "Practical and Asymptotically Exact Conditional Sampling in Diffusion
    Models", 2023.
"""

import math
import numbers
from dataclasses import dataclass

import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from .decoders import GaussianDecoder
from .distributions import draw
from .forward import GaussianForward

__all__ = [
    "Observation",
    "SMCResult",
    "condition",
    "denoise_from_start_level",
    "denoising_start_level",
    "product_sample",
    "smc_sample",
]

LOG_2PI = math.log(2 * math.pi)

#: The smallest positive observation noise, on the model's scale where the
#: data have variance 1. Below it, precisions overflow in float32; an exact
#: observation (noise 0) is the limit and is handled exactly.
MIN_NOISE_SCALE = 1e-6


class Observation:
    r"""
    An observation :math:`y` of the coordinates :math:`M` of :math:`x_0`.

    :param torch.Tensor values: :math:`y`, shape ``[N] + event_shape``, on
        the model's scale. Values at unobserved coordinates are ignored.
    :param torch.Tensor mask: boolean, broadcastable to ``values``; ``True``
        marks an observed coordinate. All coordinates are observed if omitted.
    :param float noise_scale: :math:`\sigma \ge 0`, the standard deviation of
        the observation noise; 0 observes the coordinates exactly.
    :raises ValueError: if the mask does not broadcast to the values, if
        :math:`\sigma` is negative or not finite, or if an observed value
        is not finite.
    """

    def __init__(self, values, mask=None, noise_scale=0.0):
        if not torch.is_tensor(values) or not values.is_floating_point() or values.dim() < 2:
            raise ValueError("values must be a floating-point tensor of shape [N] + event_shape")
        if values.shape[0] < 1:
            raise ValueError("the observation has no examples: pass values of shape [N] + event_shape with N >= 1")

        if mask is None:
            mask = torch.ones_like(values, dtype=torch.bool)
        mask = torch.as_tensor(mask, device=values.device)
        if mask.dtype != torch.bool:
            raise ValueError(f"the mask must be boolean (True = observed), got dtype {mask.dtype}")
        try:
            mask = torch.broadcast_to(mask, values.shape)
        except RuntimeError:
            raise ValueError(
                f"a mask of shape {tuple(mask.shape)} does not broadcast to the observed values of shape "
                f"{tuple(values.shape)}: pass a mask of shape {tuple(values.shape)} or one that broadcasts to it"
            ) from None

        if torch.is_tensor(noise_scale) and noise_scale.numel() == 1:
            noise_scale = noise_scale.item()
        if isinstance(noise_scale, bool) or not isinstance(noise_scale, numbers.Real):
            raise ValueError(
                f"noise_scale must be one number, the standard deviation shared by every observed coordinate, "
                f"got {noise_scale!r}"
            )
        noise_scale = float(noise_scale)
        if not (math.isfinite(noise_scale) and noise_scale >= 0):
            raise ValueError(
                f"noise_scale = {noise_scale!r} is invalid: pass the observation noise's standard deviation, >= 0"
            )
        if 0 < noise_scale < MIN_NOISE_SCALE:
            raise ValueError(
                f"noise_scale = {noise_scale!r} is below {MIN_NOISE_SCALE} on the model's unit-variance scale, where "
                "the Gaussian factors overflow: pass 0 to observe the coordinates exactly"
            )

        if not torch.isfinite(values[mask]).all():
            raise ValueError("the observed values contain NaN or infinity: mark those coordinates unobserved")

        self.values = torch.where(mask, values, torch.zeros_like(values))
        self.mask = mask
        self.noise_scale = noise_scale

    def repeat(self, count):
        """Return the observation with every example repeated ``count`` times in a row."""
        values = self.values.repeat_interleave(count, dim=0)
        return Observation(values, self.mask.repeat_interleave(count, dim=0), self.noise_scale)

    def log_factor(self, x, alpha_bar):
        r"""
        Compute :math:`\log \psi_t(x)` per example, for :math:`\bar\alpha_t` of shape ``[]``.

        :returns: shape ``[N]``.
        """
        variance = alpha_bar * self.noise_scale**2 + 1 - alpha_bar
        log_density = _normal_log_density(alpha_bar.sqrt() * self.values, x, variance)
        return _masked_sum(log_density, self.mask)


@dataclass
class SMCResult:
    """
    The output of :func:`smc_sample`.

    :ivar torch.Tensor particles: samples of :math:`x_0`, shape ``[N, P] + event_shape``.
    :ivar torch.Tensor log_weights: normalized log weights, shape ``[N, P]``;
        ``log_weights.exp()`` sums to one over particles.
    :ivar torch.Tensor log_marginal_likelihood: the estimate of
        :math:`\\log p(y)` per example in nats, shape ``[N]``; for
        :math:`\\sigma = 0` a log density of the observed coordinates.
    :ivar int num_resampled: the number of steps at which particles were resampled.
    """

    particles: torch.Tensor
    log_weights: torch.Tensor
    log_marginal_likelihood: torch.Tensor
    num_resampled: int

    def mean(self):
        """Compute the weighted posterior mean of :math:`x_0`, shape ``[N] + event_shape``."""
        weights = self.log_weights.exp().reshape(self.log_weights.shape + (1,) * (self.particles.dim() - 2))
        return (weights * self.particles).sum(1)

    def effective_sample_size(self):
        """Compute the effective sample size of the final weights, shape ``[N]``."""
        return 1.0 / self.log_weights.exp().pow(2).sum(-1)


def _normal_log_density(value, loc, variance):
    return -0.5 * (LOG_2PI + variance.log() + (value - loc) ** 2 / variance)


def _masked_sum(values, mask):
    values = torch.where(mask, values, torch.zeros_like(values))
    return values.reshape(values.shape[0], -1).sum(-1)


def _check_model(diffusion, observation):
    if not isinstance(diffusion.forward_process, GaussianForward):
        raise ValueError(
            f"conditioning needs a Gaussian forward process, not {type(diffusion.forward_process).__name__}"
        )
    shape = tuple(observation.values.shape[1:])
    if shape != tuple(diffusion.event_shape):
        raise ValueError(
            f"the observation has examples of shape {shape} but the model's are {tuple(diffusion.event_shape)}"
        )
    diffusion.check_device(observation.values, "the observation's values")


def _combine(loc, variance, target, target_variance, mask):
    r"""
    Multiply :math:`\mathcal{N}(x; \mu, s^2)` by :math:`\mathcal{N}(y'; x, c)`
    on the masked coordinates.

    :returns: ``(mean, variance, log_normalizer)``: the product's moments
        (the step's own where unmasked) and
        :math:`\log \mathcal{N}(y'; \mu, s^2 + c)` summed over masked
        coordinates, shape ``[N]``.
    """
    variance = variance.expand_as(loc)
    precision = 1 / variance + 1 / target_variance
    combined_variance = 1 / precision
    combined_mean = combined_variance * (loc / variance + target / target_variance)
    mean = torch.where(mask, combined_mean, loc)
    new_variance = torch.where(mask, combined_variance, variance)
    log_normalizer = _masked_sum(_normal_log_density(target, loc, variance + target_variance), mask)
    return mean, new_variance, log_normalizer


def _level_target(observation, schedule, t, like):
    alpha_bar = schedule.alphas_bar[t].to(like.dtype)
    target = alpha_bar.sqrt() * observation.values.to(like.dtype)
    variance = alpha_bar * observation.noise_scale**2 + 1 - alpha_bar
    return target, variance, alpha_bar


def _gaussian_step(loc, variance, noise):
    return loc + variance.sqrt() * noise


def _decoder_log_prob(diffusion, x1, x0):
    """Log-density of every coordinate of ``x0`` under :math:`p(x_0 \\mid x_1)`, shape of ``x0``."""
    distribution = diffusion.decoder_distribution(x1)
    while hasattr(distribution, "base_dist"):
        distribution = distribution.base_dist
    return distribution.log_prob(x0)


def product_sample(diffusion, observation, generator=None):
    r"""
    Draw one posterior sample per example with the per-step product of [1].

    Each step draws :math:`x_{t-1}` from :math:`p(x_{t-1} \mid x_t)\,
    \psi_{t-1}(x_{t-1})`, renormalized. For :math:`\sigma = 0` the observed
    coordinates are then clamped to a sample of the forward marginal
    :math:`q(x_{t-1} \mid x_0 = y) = \mathcal{N}(\sqrt{\bar\alpha_{t-1}}\, y, 1 - \bar\alpha_{t-1})`,
    at level ``t - 1`` after the step from ``t``, and :math:`x_0` equals
    ``y`` there. For :math:`\sigma > 0` the observed coordinates take the
    precision-weighted product of the step and :math:`\psi_{t-1}`.

    With no coordinate observed, it consumes ``generator`` exactly as
    :meth:`~pyro_diffusion.model.DiffusionModel.sample` does and returns the
    same samples.

    :param DiffusionModel diffusion: a model with a Gaussian forward process.
    :param Observation observation: ``N`` observed examples.
    :param torch.Generator generator: an optional random stream.
    :returns: :math:`x_0`, shape ``[N] + event_shape``.
    """
    _check_model(diffusion, observation)
    schedule = diffusion.forward_process.schedule
    mask = observation.mask
    exact = observation.noise_scale == 0
    observed_any = bool(mask.any())
    with torch.no_grad():
        x = draw(diffusion.prior_distribution(len(observation.values)), generator)
        if observed_any:
            if exact:
                x = _clamp_to_level(x, observation, schedule, diffusion.num_steps, generator)
            else:
                x = _product_draw_prior(x, observation, schedule, diffusion.num_steps)
        for t in range(diffusion.num_steps, 1, -1):
            step = torch.tensor(t, device=x.device)
            loc, log_variance = diffusion.reverse.loc_log_variance(x, step)
            variance = log_variance.exp().expand_as(loc)
            noise = torch.randn(loc.shape, dtype=loc.dtype, device=loc.device, generator=generator)
            if observed_any and not exact:
                target, target_variance, _ = _level_target(observation, schedule, t - 1, loc)
                loc, variance, _ = _combine(loc, variance, target, target_variance, mask)
            x = _gaussian_step(loc, variance, noise)
            if observed_any and exact:
                x = _clamp_to_level(x, observation, schedule, t - 1, generator)
        x0 = draw(diffusion.decoder_distribution(x), generator)
        if observed_any and exact:
            return torch.where(mask, observation.values.to(x0.dtype), x0)
        if observed_any:
            # The last factor is the exact likelihood N(y; x_0, sigma^2); the
            # decoder enters through its mean and variance.
            loc, log_variance = diffusion.reverse.loc_log_variance(x, torch.tensor(1, device=x.device))
            variance = log_variance.exp().expand_as(loc)
            noise = (x0 - loc) / variance.sqrt()
            loc, variance, _ = _combine(
                loc, variance, observation.values.to(loc.dtype), observation.noise_scale**2, mask
            )
            x0 = torch.where(mask, _gaussian_step(loc, variance, noise), x0)
        return x0


def _clamp_to_level(x, observation, schedule, t, generator):
    alpha_bar = schedule.alphas_bar[t].to(x.dtype)
    noise = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
    level = alpha_bar.sqrt() * observation.values.to(x.dtype) + (1 - alpha_bar).sqrt() * noise
    return torch.where(observation.mask, level, x)


def _product_draw_prior(x, observation, schedule, t):
    # x was drawn from N(0, I); redraw the observed coordinates from N(0, I) psi_T.
    zeros = torch.zeros_like(x)
    target, target_variance, _ = _level_target(observation, schedule, t, x)
    loc, variance, _ = _combine(zeros, torch.ones_like(x), target, target_variance, observation.mask)
    return torch.where(observation.mask, loc + variance.sqrt() * x, x)


def smc_sample(diffusion, observation, num_particles, generator=None, resample_threshold=0.5):
    r"""
    Sample the posterior :math:`p(x_0 \mid y)` by sequential Monte Carlo over
    the reverse chain, with ``P`` particles per observed example.

    The intermediate targets are
    :math:`\gamma_t(x_{t:T}) = p(x_T) \prod_{s > t} p(x_{s-1} \mid x_s)\, \psi_t(x_t)`,
    and the final one is the exact posterior, :math:`\gamma_0 \propto p(x_{0:T})\, p(y \mid x_0)`.
    Each step proposes from the locally optimal
    :math:`p(x_{t-1} \mid x_t)\, \psi_{t-1}(x_{t-1})`, renormalized, so the
    incremental weight is its normalizer divided by :math:`\psi_t(x_t)`:

    .. math::

        w_t = \frac{\int p(x_{t-1} \mid x_t)\, \psi_{t-1}(x_{t-1})\, dx_{t-1}}{\psi_t(x_t)}.

    At the last step, :math:`\sigma = 0` sets the observed coordinates of
    :math:`x_0` to ``y`` with weight :math:`p(x_{0,M} = y \mid x_1) / \psi_1(x_1)`
    (for any decoder), and :math:`\sigma > 0` uses the same product with the
    Gaussian decoder, or draws from another decoder with weight
    :math:`\psi_0(x_0) / \psi_1(x_1)`. Particles are resampled
    (systematically) when the effective sample size falls below
    ``resample_threshold * P``. The estimate of :math:`p(y)` is unbiased and
    the weighted particles converge to the posterior as ``P`` grows.

    :param DiffusionModel diffusion: a model with a Gaussian forward process.
    :param Observation observation: ``N`` observed examples.
    :param int num_particles: ``P >= 1``.
    :param torch.Generator generator: an optional random stream.
    :param float resample_threshold: in ``[0, 1]``; 0 never resamples.
    :rtype: SMCResult
    """
    _check_model(diffusion, observation)
    if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
        raise ValueError(f"num_particles must be an integer >= 1, got {num_particles!r}")
    if not 0 <= resample_threshold <= 1:
        raise ValueError(f"resample_threshold must be in [0, 1], got {resample_threshold!r}")
    schedule = diffusion.forward_process.schedule
    num_examples = len(observation.values)
    particles = observation.repeat(num_particles)
    mask = particles.mask
    exact = observation.noise_scale == 0
    T = diffusion.num_steps
    with torch.no_grad():
        x = draw(diffusion.prior_distribution(num_examples * num_particles), generator)
        dtype = x.dtype
        # 1. x_T from N(0, I) psi_T; the normalizer is the same for every particle.
        target, target_variance, alpha_bar = _level_target(particles, schedule, T, x)
        loc, variance, log_normalizer = _combine(torch.zeros_like(x), torch.ones_like(x), target, target_variance, mask)
        x = torch.where(mask, _gaussian_step(loc, variance, x), x)
        log_weights = log_normalizer
        log_evidence = torch.zeros(num_examples, dtype=dtype, device=x.device)
        num_resampled = 0
        log_factor = particles.log_factor(x, alpha_bar)

        # 2. x_{t-1} from p(x_{t-1} | x_t) psi_{t-1}, for t = T..2.
        for t in range(T, 1, -1):
            step = torch.tensor(t, device=x.device)
            loc, log_variance = diffusion.reverse.loc_log_variance(x, step)
            noise = torch.randn(loc.shape, dtype=loc.dtype, device=loc.device, generator=generator)
            target, target_variance, alpha_bar = _level_target(particles, schedule, t - 1, loc)
            loc, variance, log_normalizer = _combine(loc, log_variance.exp(), target, target_variance, mask)
            x = _gaussian_step(loc, variance, noise)
            log_weights = log_weights + log_normalizer - log_factor
            log_factor = particles.log_factor(x, alpha_bar)
            x, log_weights, log_evidence, resampled = _maybe_resample(
                x, log_weights, log_evidence, num_examples, num_particles, resample_threshold, generator, [log_factor]
            )
            if resampled is not None:
                log_factor = resampled[0]
                num_resampled += 1

        # 3. x_0 from the decoder and the exact likelihood of y.
        x0 = draw(diffusion.decoder_distribution(x), generator)
        values = particles.values.to(dtype)
        if exact:
            log_likelihood = _masked_sum(_decoder_log_prob(diffusion, x, values), mask)
            x0 = torch.where(mask, values, x0)
        elif isinstance(diffusion.decoder, GaussianDecoder):
            loc, log_variance = diffusion.reverse.loc_log_variance(x, torch.tensor(1, device=x.device))
            variance = log_variance.exp().expand_as(loc)
            noise = (x0 - loc) / variance.sqrt()
            loc, variance, log_likelihood = _combine(loc, variance, values, observation.noise_scale**2, mask)
            x0 = torch.where(mask, _gaussian_step(loc, variance, noise), x0)
        else:
            noise_variance = torch.tensor(observation.noise_scale**2, dtype=dtype)
            log_likelihood = _masked_sum(_normal_log_density(values, x0, noise_variance), mask)
        log_weights = log_weights + log_likelihood - log_factor

        grouped = log_weights.reshape(num_examples, num_particles)
        log_evidence = log_evidence + torch.logsumexp(grouped, -1) - math.log(num_particles)
        normalized = grouped - torch.logsumexp(grouped, -1, keepdim=True)
        return SMCResult(
            particles=x0.reshape((num_examples, num_particles) + tuple(x0.shape[1:])),
            log_weights=normalized,
            log_marginal_likelihood=log_evidence,
            num_resampled=num_resampled,
        )


def _maybe_resample(x, log_weights, log_evidence, num_examples, num_particles, threshold, generator, extras):
    grouped = log_weights.reshape(num_examples, num_particles)
    normalized = grouped - torch.logsumexp(grouped, -1, keepdim=True)
    ess = 1.0 / normalized.exp().pow(2).sum(-1)
    if not bool((ess < threshold * num_particles).any()):
        return x, log_weights, log_evidence, None
    # Systematic resampling of every example's particles: one uniform offset per example.
    offsets = torch.rand(num_examples, 1, dtype=normalized.dtype, device=x.device, generator=generator)
    positions = (offsets + torch.arange(num_particles, dtype=normalized.dtype, device=x.device)) / num_particles
    cumulative = normalized.exp().cumsum(-1)
    cumulative[:, -1] = 1.0
    chosen = torch.searchsorted(cumulative, positions).clamp(max=num_particles - 1)
    index = (chosen + num_particles * torch.arange(num_examples, device=x.device).unsqueeze(-1)).reshape(-1)
    log_evidence = log_evidence + torch.logsumexp(grouped, -1) - math.log(num_particles)
    log_weights = torch.zeros_like(log_weights)
    return x[index], log_weights, log_evidence, [extra[index] for extra in extras]


def denoising_start_level(schedule, noise_scale):
    r"""
    Find the level :math:`t^*` at which the forward marginal matches an
    observation :math:`y = x_0 + \sigma\epsilon`: the ``t`` whose
    :math:`(1 - \bar\alpha_t)/\bar\alpha_t` is closest to :math:`\sigma^2`.
    Then :math:`\sqrt{\bar\alpha_{t^*}}\, y` has the distribution of
    :math:`x_{t^*}` given :math:`x_0`, and the reverse chain can start there.

    :param schedule: a :class:`~pyro_diffusion.schedules.BetaSchedule`.
    :param float noise_scale: :math:`\sigma > 0`.
    :returns: ``(t_star, alpha_bar)``, an int in ``1..T`` and :math:`\bar\alpha_{t^*}`.
    """
    noise_scale = float(noise_scale)
    if not (math.isfinite(noise_scale) and noise_scale > 0):
        raise ValueError(f"noise_scale = {noise_scale!r} is invalid: the noise's standard deviation must be > 0")
    alphas_bar = schedule.alphas_bar[1:].double()
    ratio = (1 - alphas_bar) / alphas_bar
    t_star = int((ratio.log() - 2 * math.log(noise_scale)).abs().argmin()) + 1
    return t_star, float(alphas_bar[t_star - 1])


def condition(model, data, *args, **kwargs):
    """
    Condition ``model`` on ``data`` like ``pyro.condition``, after checking
    that every name in ``data`` is a sample site of ``model(*args, **kwargs)``.
    ``pyro.condition`` itself ignores names that match no site, so a
    misspelled name would leave the model unconditioned.

    :param callable model: a Pyro model.
    :param dict data: site names to observed values.
    :param args: arguments of one trial run of ``model`` that lists its sites.
    :returns: the conditioned model.
    :raises ValueError: naming the unknown sites and some known ones.
    """
    with poutine.block():
        trace = poutine.trace(model).get_trace(*args, **kwargs)
    # A plate's subsample is recorded as a sample site too; it cannot be conditioned.
    names = [
        name for name, site in trace.nodes.items() if site["type"] == "sample" and not site_is_subsample(site)
    ]
    unknown = sorted(set(data) - set(names))
    if unknown:
        listed = ", ".join(names if len(names) <= 4 else names[:3] + ["..."] + names[-1:])
        raise ValueError(f"no sample site named {', '.join(map(repr, unknown))} in the model; its sites are {listed}")
    return poutine.condition(model, data)


def denoise_from_start_level(diffusion, noisy, noise_scale, generator=None):
    r"""
    Denoise by the paper's shortcut: treat :math:`\sqrt{\bar\alpha_{t^*}}\, y`
    as a sample of :math:`x_{t^*}`, with :math:`t^*` from
    :func:`denoising_start_level`, and run the reverse chain from there.

    :param DiffusionModel diffusion: a model with a Gaussian forward process.
    :param torch.Tensor noisy: :math:`y = x_0 + \sigma\epsilon`, shape ``[N] + event_shape``.
    :param float noise_scale: :math:`\sigma > 0`.
    :param torch.Generator generator: an optional random stream.
    :returns: :math:`x_0`, shape ``[N] + event_shape``.
    """
    observation = Observation(noisy, noise_scale=noise_scale)
    _check_model(diffusion, observation)
    t_star, alpha_bar = denoising_start_level(diffusion.forward_process.schedule, noise_scale)
    with torch.no_grad():
        x = math.sqrt(alpha_bar) * observation.values
        for t in range(t_star, 1, -1):
            x = draw(diffusion.reverse.distribution(x, torch.tensor(t, device=x.device)), generator)
        return draw(diffusion.decoder_distribution(x), generator)
