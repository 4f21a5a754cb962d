r"""
Few-step sampling of Gaussian diffusion models with the update of DDIM [1].

The sampler visits a strided subsequence of time steps
:math:`0 = \tau_0 < \tau_1 < \dots < \tau_S = T` (see
:func:`strided_timesteps`), starts from :math:`x_T \sim p(x_T)` and moves
from :math:`t = \tau_i` to :math:`s = \tau_{i-1}` with Eq. (12) of [1],
written with :math:`\bar\alpha` of [2] where [1] writes :math:`\alpha`:

.. math::

    x_s = \sqrt{\bar\alpha_s}\, \hat x_0
        + \sqrt{1 - \bar\alpha_s - \sigma_{t \to s}^2}\, \hat\epsilon
        + \sigma_{t \to s}\, z, \qquad z \sim \mathcal{N}(0, I),

    \hat x_0 = \frac{x_t - \sqrt{1 - \bar\alpha_t}\, \hat\epsilon}{\sqrt{\bar\alpha_t}},
    \qquad
    \sigma_{t \to s} = \eta \sqrt{\frac{1 - \bar\alpha_s}{1 - \bar\alpha_t}}
        \sqrt{1 - \frac{\bar\alpha_t}{\bar\alpha_s}},

where :math:`\hat\epsilon = \hat\epsilon(x_t, t)` is the predicted noise
and :math:`\hat x_0` the predicted data, never clipped. With
:math:`\eta = 0` every step is deterministic. With :math:`\eta = 1` and
stride 1, :math:`\sigma_{t \to t-1}^2 = \tilde\beta_t` and the mean is the
forward posterior mean :math:`\tilde\mu_t(x_t, \hat x_0)`, which is the
ancestral step of [2] with the variance :math:`\tilde\beta_t`.

The predicted noise comes from the reverse kernel:

- :class:`~pyro_diffusion.reverse.EpsilonReverse`: the network's output.
- Any other Gaussian kernel (:class:`~pyro_diffusion.reverse.PaperReverse`,
  :class:`~pyro_diffusion.exact.LinearGaussianReverse`, ...): its mean
  :math:`\mu` is read as the forward posterior mean
  :math:`\tilde\mu_t = P_0 \hat x_0 + P_t x_t` (Eq. 7 in [2]), so
  :math:`\hat x_0 = (\mu - P_t x_t) / P_0` and
  :math:`\hat\epsilon = (x_t - \sqrt{\bar\alpha_t}\, \hat x_0) / \sqrt{1 - \bar\alpha_t}`.
  The weight :math:`P_0 = \sqrt{\bar\alpha_{t-1}}\beta_t / (1 - \bar\alpha_t)`
  is positive at every step, so this is always defined. Training with the
  bound fits the kernel's mean to :math:`\mathbb{E}[\tilde\mu_t \mid x_t]`.
  Because :math:`\tilde\mu_t` is linear in :math:`x_0`, that is
  :math:`\tilde\mu_t(x_t, \mathbb{E}[x_0 \mid x_t])`, so :math:`\hat x_0`
  estimates :math:`\mathbb{E}[x_0 \mid x_t]` as the noise prediction does.

Binomial models have no Gaussian noise to predict and are rejected.

The last jump, from :math:`\tau_1` to 0, returns :math:`\hat x_0` (the
update above with :math:`\bar\alpha_0 = 1`) unless :math:`\tau_1 = 1`.
At :math:`\tau_1 = 1` it draws from the model's decoder
:math:`p(x_0 \mid x_1)` instead, as ancestral sampling does.

Fewer steps cost accuracy even with the exact noise prediction, because
each jump replaces :math:`x_0` by its conditional mean. For data
:math:`\mathcal{N}(0, 1)` and the linear schedule with ``T = 200``, the
samples have variance 0.69 (:math:`\eta = 0`) and 0.55 (:math:`\eta = 1`)
at ``S = 10``, and 0.93 and 0.86 at ``S = 50``. These are values of the
closed-form moment recursion in ``tests/test_fewstep.py``, which the
sampler's output matches there.

Shapes: samples and every :math:`x_t` have shape ``[N] + event_shape``.

References

[1] J. Song, C. Meng, S. Ermon, "Denoising Diffusion Implicit Models",
    2021.
[2] J. Ho, A. Jain, P. Abbeel, "Denoising Diffusion Probabilistic Models",
    2020.
"""

import math
import numbers

import torch

from .distributions import draw
from .forward import GaussianForward, as_time_tensor
from .reverse import EpsilonReverse, ReverseKernel

__all__ = [
    "ddim_loc_scale",
    "predict_noise_and_x0",
    "sample_strided",
    "sample_strided_steps",
    "strided_timesteps",
]


def _check_integer(value, name, fix):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}: {fix}")
    return int(value)


def strided_timesteps(num_steps, sampling_steps):
    r"""
    Choose ``S`` evenly spaced time steps out of ``1..T`` that end at ``T``:

    .. math::

        \tau_i = \left\lceil \frac{i T}{S} \right\rceil, \quad i = 1, \dots, S.

    Together with :math:`\tau_0 = 0` the grid splits ``0..T`` into ``S``
    jumps whose lengths differ by at most one. The steps are strictly
    increasing because every jump is at least :math:`T / S \ge 1` long.
    ``S = T`` gives every step ``1..T``, and :math:`\tau_1 = 1` only then.

    :param int num_steps: ``T >= 1``.
    :param int sampling_steps: ``S`` in ``1..T``.
    :returns: :math:`[\tau_1, \dots, \tau_S]`, increasing.
    :rtype: list[int]
    :raises ValueError: if ``S`` is not an integer in ``1..T``.
    """
    num_steps = _check_integer(num_steps, "the number of diffusion steps T", "pass an int >= 1")
    if num_steps < 1:
        raise ValueError(f"the number of diffusion steps T must be >= 1, got {num_steps}")
    sampling_steps = _check_integer(
        sampling_steps, "sampling_steps", f"pass an int in 1..{num_steps}"
    )
    if not 1 <= sampling_steps <= num_steps:
        raise ValueError(
            f"sampling_steps = {sampling_steps} is outside 1..{num_steps}: "
            f"pass a number of steps between 1 and the model's T = {num_steps}"
        )
    # ceil(i T / S) in integer arithmetic, exact for any T.
    return [-(-i * num_steps // sampling_steps) for i in range(1, sampling_steps + 1)]


def _check_eta(eta):
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real):
        raise ValueError(f"eta must be a real number, got {eta!r}: pass 0.0 (deterministic) to 1.0")
    eta = float(eta)
    if not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta = {eta!r} is invalid: pass a finite eta >= 0, e.g. 0.0 (deterministic) or 1.0")
    return eta


def _check_model(diffusion):
    forward = diffusion.forward_process
    kernel = diffusion.reverse
    if not isinstance(forward, GaussianForward) or not kernel.has_gaussian_steps:
        raise ValueError(
            f"few-step sampling needs a Gaussian diffusion model (GaussianForward with a Gaussian "
            f"reverse kernel such as EpsilonReverse or PaperReverse), got {type(forward).__name__} "
            f"with {type(kernel).__name__}: sample this model with diffusion.sample"
        )
    if type(kernel).loc_log_variance is ReverseKernel.loc_log_variance:
        raise ValueError(
            f"{type(kernel).__name__} does not implement loc_log_variance, so its noise prediction "
            "is unknown: few-step sampling supports EpsilonReverse and Gaussian kernels with loc_log_variance"
        )


def _noise_ratio(schedule, t, t_prev):
    r"""
    Compute :math:`\sigma^2 / (\eta^2 (1 - \bar\alpha_s))
    = (1 - \bar\alpha_t / \bar\alpha_s) / (1 - \bar\alpha_t)` for the
    jump from ``t`` to ``s = t_prev``, a float64 0-d tensor in ``[0, 1)``
    that is zero for ``s = 0``.
    """
    alphas_bar = schedule.alphas_bar.detach()
    if t_prev == 0:
        return torch.zeros_like(alphas_bar[0])
    # 1 - abar_t / abar_s, the variance of the forward jump q(x_t | x_s).
    fresh = -torch.expm1(alphas_bar[t].log() - alphas_bar[t_prev].log())
    return fresh / schedule.one_minus_alphas_bar.detach()[t]


def _check_eta_fits(eta, ratios):
    # The noise weight sqrt(1 - abar_s - sigma^2) is real only while
    # eta^2 * ratio <= 1, which every eta <= 1 satisfies.
    largest = max(float(ratio) for ratio in ratios)
    if eta**2 * largest > 1:
        raise ValueError(
            f"eta = {eta!r} makes a jump's noise variance sigma^2 exceed 1 - alpha_bar of its "
            f"target step: pass eta <= {largest ** -0.5:.6g} for these steps (eta <= 1 always works)"
        )


def _jump_coefficients(schedule, t, t_prev, eta):
    r"""
    Compute the float64 weights :math:`\sqrt{\bar\alpha_s}`,
    :math:`\sqrt{1 - \bar\alpha_s - \sigma^2}` and :math:`\sigma` of the
    jump from ``t`` to ``s = t_prev``, each a 0-d tensor. ``eta`` must have
    passed :func:`_check_eta_fits`.
    """
    signal_prev = schedule.alphas_bar.detach()[t_prev].sqrt()
    one_minus_prev = schedule.one_minus_alphas_bar.detach()[t_prev]
    ratio = _noise_ratio(schedule, t, t_prev)
    variance = eta**2 * ratio * one_minus_prev
    # 1 - abar_s - sigma^2 in factored form, which avoids cancellation. The
    # clamp absorbs rounding when eta is at its largest allowed value.
    noise_weight = (one_minus_prev * (1 - eta**2 * ratio)).clamp(min=0).sqrt()
    return signal_prev, noise_weight, variance.sqrt()


def predict_noise_and_x0(kernel, x_t, t):
    r"""
    Predict the noise :math:`\hat\epsilon` and the data :math:`\hat x_0` at
    ``x_t`` with a Gaussian reverse kernel: from the network's noise for
    :class:`~pyro_diffusion.reverse.EpsilonReverse`, otherwise from the
    kernel's mean read as the forward posterior mean (see the module
    docstring). One network evaluation either way.

    :param ReverseKernel kernel: a Gaussian reverse kernel.
    :param torch.Tensor x_t: shape ``[N] + event_shape``.
    :param int t: one time step in ``1..T``.
    :returns: ``(noise, x0)``, each of the shape of ``x_t``.
    :rtype: tuple[torch.Tensor, torch.Tensor]
    """
    step = as_time_tensor(t, kernel.forward_process.num_steps, device=x_t.device)
    s = kernel.schedule
    sqrt_alpha_bar = s.gather("sqrt_alphas_bar", step, x_t)
    sqrt_one_minus = s.gather("sqrt_one_minus_alphas_bar", step, x_t)
    if isinstance(kernel, EpsilonReverse):
        noise = kernel.network_outputs(x_t, step)[0]
        x0 = (x_t - sqrt_one_minus * noise) / sqrt_alpha_bar
        return noise, x0
    loc, _ = kernel.loc_log_variance(x_t, step)
    x0 = (loc - s.gather("posterior_coef_xt", step, x_t) * x_t) / s.gather(
        "posterior_coef_x0", step, x_t
    )
    noise = (x_t - sqrt_alpha_bar * x0) / sqrt_one_minus
    return noise, x0


def ddim_loc_scale(kernel, x_t, t, t_prev, eta):
    r"""
    Compute the DDIM jump from ``t`` to ``t_prev`` as a Gaussian
    :math:`\mathcal{N}(\text{loc}, \text{scale}^2 I)`, Eq. (12) of [1].
    At ``t_prev = 0`` it is the point :math:`\hat x_0` with scale 0.
    Gradients flow to the network, unlike in :func:`sample_strided_steps`,
    which runs under ``torch.no_grad()``.

    :param ReverseKernel kernel: a Gaussian reverse kernel.
    :param torch.Tensor x_t: shape ``[N] + event_shape``.
    :param int t: the current step in ``1..T``.
    :param int t_prev: the target step in ``0..t - 1``.
    :param float eta: :math:`\eta \ge 0`.
    :returns: ``(loc, scale)``: ``loc`` of the shape of ``x_t`` and ``scale``
        a 0-d tensor, both in the dtype of ``x_t``.
    :raises ValueError: for steps out of order or an ``eta`` whose noise
        variance exceeds :math:`1 - \bar\alpha_{t_{prev}}`.
    """
    num_steps = kernel.forward_process.num_steps
    t = _check_integer(t, "t", f"pass a time step in 1..{num_steps}")
    t_prev = _check_integer(t_prev, "t_prev", f"pass a time step in 0..{t - 1}")
    if not 0 <= t_prev < t <= num_steps:
        raise ValueError(
            f"the jump from t = {t} to t_prev = {t_prev} is invalid: pass 0 <= t_prev < t <= {num_steps}"
        )
    eta = _check_eta(eta)
    _check_eta_fits(eta, [_noise_ratio(kernel.schedule, t, t_prev)])
    signal_prev, noise_weight, scale = _jump_coefficients(kernel.schedule, t, t_prev, eta)
    noise, x0 = predict_noise_and_x0(kernel, x_t, t)
    loc = signal_prev.to(x_t) * x0 + noise_weight.to(x_t) * noise
    return loc, scale.to(x_t)


def sample_strided_steps(diffusion, num_samples, sampling_steps, eta=0.0, generator=None):
    r"""
    Sample through the strided steps of :func:`strided_timesteps` with the
    DDIM update, one jump at a time.

    - The last jump, from :math:`\tau_1` to 0, draws from the model's
      decoder :math:`p(x_0 \mid x_1)` when :math:`\tau_1 = 1`, which
      happens only for ``S = T``. Otherwise it returns :math:`\hat x_0`
      predicted at :math:`\tau_1`, unclipped, because the decoder models
      only the step from :math:`x_1`.
    - ``S = T`` with ``eta = 1`` runs the model's own ancestral sampler,
      :meth:`~pyro_diffusion.model.DiffusionModel.sample_steps`, so it
      returns the same tensors as ``diffusion.sample`` under the same seed.
      For ``EpsilonReverse(variance="small")`` that is also the DDIM
      update with :math:`\eta = 1` (see the module docstring).
      NOTE: kernels with another variance keep it here, so their samples
      at ``eta = 1`` differ in distribution from those at an ``eta`` just below 1.
    - With ``eta = 0`` the only random draws are :math:`x_T` and, for
      ``S = T``, the decoder's.

    The network runs under ``torch.no_grad()`` in the dtype of the model's
    parameters, on the device of its forward process.

    :param DiffusionModel diffusion: a Gaussian diffusion model.
    :param int num_samples: ``N >= 1``.
    :param int sampling_steps: ``S`` in ``1..T``, the number of network evaluations.
    :param float eta: :math:`\eta \ge 0`, the noise scale of each jump
        relative to the forward posterior's standard deviation: 0 for the
        deterministic sampler, 1 for the stochastic one of [2]. Values
        above 1 are accepted while every jump's noise variance stays at
        most :math:`1 - \bar\alpha_s`.
    :param torch.Generator generator: an optional random stream; the same
        seed gives the same samples.
    :returns: an iterator of ``(t, x_t)`` for ``t = T``, the strided steps
        down to :math:`\tau_1`, then 0, each ``x_t`` of shape ``[N] + event_shape``.
    :raises ValueError: for invalid ``num_samples``, ``sampling_steps`` or
        ``eta``, or a model that is not Gaussian.
    """
    num_samples = _check_integer(num_samples, "num_samples", "pass an int >= 1")
    if num_samples < 1:
        raise ValueError(f"num_samples = {num_samples} is invalid: pass num_samples >= 1")
    _check_model(diffusion)
    steps = strided_timesteps(diffusion.num_steps, sampling_steps)
    eta = _check_eta(eta)
    if len(steps) == diffusion.num_steps and eta == 1.0:
        return diffusion.sample_steps(num_samples, generator)
    schedule = diffusion.forward_process.schedule
    targets = [0] + steps[:-1]
    # Checked up front so that an invalid eta raises before any network runs.
    _check_eta_fits(eta, [_noise_ratio(schedule, t, t_prev) for t, t_prev in zip(steps, targets)])
    coefficients = [
        _jump_coefficients(schedule, t, t_prev, eta) for t, t_prev in zip(steps, targets)
    ]
    jumps = list(zip(reversed(steps), reversed(targets), reversed(coefficients)))
    return _run_jumps(diffusion, num_samples, jumps, generator)


@torch.no_grad()
def _run_jumps(diffusion, num_samples, jumps, generator):
    kernel = diffusion.reverse
    x = draw(diffusion.prior_distribution(num_samples), generator)
    yield diffusion.num_steps, x
    for t, t_prev, (signal_prev, noise_weight, scale) in jumps:
        if t_prev == 0 and t == 1:
            x = draw(diffusion.decoder_distribution(x), generator)
        else:
            noise, x0 = predict_noise_and_x0(kernel, x, t)
            x = signal_prev.to(x) * x0 + noise_weight.to(x) * noise
            if scale > 0:
                fresh = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
                x = x + scale.to(x) * fresh
        yield t_prev, x


def sample_strided(diffusion, num_samples, sampling_steps, eta=0.0, generator=None):
    r"""
    Draw ``N`` samples of :math:`x_0` with ``S`` DDIM jumps; see
    :func:`sample_strided_steps` for the arguments and the rules of the
    last jump.

    :returns: shape ``[N] + event_shape``.
    :rtype: torch.Tensor
    """
    x = None
    for _, x in sample_strided_steps(diffusion, num_samples, sampling_steps, eta, generator):
        pass
    return x
