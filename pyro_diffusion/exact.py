r"""
Closed-form results for Gaussian data and reverse kernels whose mean is
linear in :math:`x_t`, the exact references that the tests compare the
model, the guide and the estimators of the bound against.

For data :math:`x_0 \sim \mathcal{N}(m, \mathrm{diag}(v))` every marginal
of the forward process is Gaussian,

.. math::

    q(x_t) = \mathcal{N}(\mu_t, s_t), \qquad
    \mu_t = \sqrt{\bar\alpha_t}\, m, \qquad
    s_t = \bar\alpha_t v + 1 - \bar\alpha_t,

and so is every reverse conditional :math:`q(x_{t-1} \mid x_t)`, which
:class:`GaussianDataReverse` implements. For any reverse kernel of the form

.. math::

    p(x_{t-1} \mid x_t) = \mathcal{N}(a_t x_t + b_t, \mathrm{diag}(c_t)),

with a Gaussian decoder at ``t = 1``, every term of the bound is an
expectation of a quadratic function of a Gaussian variable, so
:func:`closed_form_terms` evaluates the bound without sampling.

Per-step coefficients :math:`a_t, b_t, \log c_t` are tensors of shape
``[T] + s``, where row ``t - 1`` is step ``t`` and ``s`` broadcasts to
the data's ``event_shape`` (``[T]`` alone gives one value per step).
The coefficients are stored, and the closed forms computed, in float64.
"""

import math

import torch

from .likelihood import BoundTerms
from .reverse import ReverseKernel

__all__ = [
    "GaussianDataReverse",
    "LinearGaussianReverse",
    "closed_form_bound",
    "closed_form_terms",
    "gaussian_log_likelihood",
    "linear_chain_marginal",
]

LOG_2PI = math.log(2.0 * math.pi)


def _event_tensor(value, event_shape, name):
    """Convert ``value`` to a float64 tensor of shape ``event_shape``."""
    value = torch.as_tensor(value, dtype=torch.float64).detach()
    try:
        return value.expand(event_shape).clone()
    except RuntimeError as error:
        raise ValueError(
            f"{name} of shape {tuple(value.shape)} does not broadcast to the event "
            f"shape {tuple(event_shape)}"
        ) from error


def _per_step(value, num_steps, event_shape, name):
    """
    Convert per-step coefficients of shape ``[T] + s`` to a float64 tensor
    of shape ``[T] + event_shape``.
    """
    value = torch.as_tensor(value, dtype=torch.float64).detach()
    if value.dim() < 1 or value.shape[0] != num_steps:
        raise ValueError(
            f"{name} must have shape [T] + s with T = {num_steps} rows, one per step, "
            f"got shape {tuple(value.shape)}"
        )
    trailing = value.shape[1:]
    if len(trailing) > len(event_shape):
        raise ValueError(
            f"{name} of shape {tuple(value.shape)} has more trailing dimensions than "
            f"the event shape {tuple(event_shape)}"
        )
    padding = (1,) * (len(event_shape) - len(trailing))
    value = value.reshape((num_steps,) + padding + tuple(trailing))
    try:
        return value.expand((num_steps,) + tuple(event_shape)).clone()
    except RuntimeError as error:
        raise ValueError(
            f"{name} of shape {tuple(value.shape)} does not broadcast to "
            f"[T] + event_shape = {(num_steps,) + tuple(event_shape)}"
        ) from error


def _sum_event(value, event_shape):
    """Sum the trailing ``len(event_shape)`` dimensions of ``value``."""
    batch_shape = value.shape[: value.dim() - len(event_shape)]
    return value.reshape(batch_shape + (event_shape.numel(),)).sum(-1)


def _check_data(x0):
    if not torch.is_tensor(x0) or x0.dim() < 1 or x0.shape[0] == 0:
        shape = tuple(x0.shape) if torch.is_tensor(x0) else type(x0).__name__
        raise ValueError(f"x0 must be a tensor of shape [N] + event_shape with N >= 1, got {shape}")
    if not torch.isfinite(x0).all():
        raise ValueError("x0 contains NaN or infinite values: remove or impute them")


class LinearGaussianReverse(ReverseKernel):
    r"""
    A reverse kernel whose mean is linear in :math:`x_t`, with fixed
    per-step coefficients and no network:

    .. math::

        p(x_{t-1} \mid x_t) = \mathcal{N}(a_t x_t + b_t, \mathrm{diag}(c_t)),
        \quad t = 1, \dots, T,

    where ``t = 1`` gives the Gaussian decoder's mean and variance.

    The buffers ``loc_coef``, ``loc_offset`` and ``log_variance`` contain
    :math:`a_t`, :math:`b_t` and :math:`\log c_t` with shape
    ``[T] + event_shape``, row ``t - 1`` for step ``t``, in the form that
    :func:`closed_form_terms` takes.

    :param GaussianForward forward_process: the forward process; its
        ``event_dim`` must equal ``len(event_shape)``.
    :param torch.Tensor loc_coef: :math:`a_t`, shape ``[T] + s``.
    :param torch.Tensor loc_offset: :math:`b_t`, shape ``[T] + s``.
    :param torch.Tensor log_variance: :math:`\log c_t`, shape ``[T] + s``, finite.
    :param event_shape: the shape of one example.
    :raises ValueError: if a coefficient has the wrong shape or is not
        finite, or if the event dimensions disagree with the forward process.
    """

    def __init__(self, forward_process, loc_coef, loc_offset, log_variance, event_shape):
        super().__init__(forward_process, net=None, event_shape=event_shape, num_outputs=0)
        if forward_process.event_dim != len(self.event_shape):
            raise ValueError(
                f"event_shape {tuple(self.event_shape)} has {len(self.event_shape)} "
                f"dimensions but the forward process has event_dim = {forward_process.event_dim}"
            )
        num_steps = forward_process.num_steps
        coefficients = {
            "loc_coef": loc_coef,
            "loc_offset": loc_offset,
            "log_variance": log_variance,
        }
        for name, value in coefficients.items():
            value = _per_step(value, num_steps, self.event_shape, name)
            if not torch.isfinite(value).all():
                raise ValueError(f"{name} contains NaN or infinite values")
            self.register_buffer(name, value)

    def loc_log_variance(self, x_t, t):
        r"""
        :param torch.Tensor x_t: shape ``batch_shape + event_shape``.
        :param t: time steps in ``1..T``, an int or a long tensor of shape
            ``[]`` or ``batch_shape``.
        :returns: ``(loc, log_variance)``, :math:`a_t x_t + b_t` of the shape of
            ``x_t`` and :math:`\log c_t` broadcastable to it, in the dtype of ``x_t``.
        """
        t = self._time(t, x_t)
        index = t - 1
        loc_coef = self.loc_coef[index].to(x_t.dtype)
        loc_offset = self.loc_offset[index].to(x_t.dtype)
        log_variance = self.log_variance[index].to(x_t.dtype)
        return loc_coef * x_t + loc_offset, log_variance


class GaussianDataReverse(LinearGaussianReverse):
    r"""
    The exact reverse kernel :math:`q(x_{t-1} \mid x_t)` of the forward
    process for data :math:`x_0 \sim \mathcal{N}(m, \mathrm{diag}(v))`.

    The pair :math:`(x_{t-1}, x_t)` is jointly Gaussian with marginals
    :math:`\mathcal{N}(\mu_{t-1}, s_{t-1})` and :math:`\mathcal{N}(\mu_t, s_t)`
    and covariance :math:`\sqrt{1 - \beta_t}\, s_{t-1}` per dimension, so
    conditioning on :math:`x_t` gives the linear kernel

    .. math::

        a_t = \frac{\sqrt{1 - \beta_t}\, s_{t-1}}{s_t}, \qquad
        b_t = \mu_{t-1} - a_t \mu_t, \qquad
        c_t = \frac{\beta_t s_{t-1}}{s_t},

    with :math:`\mu_0 = m` and :math:`s_0 = v`, so that ``t = 1`` gives
    :math:`q(x_0 \mid x_1)`.

    Started from :math:`q(x_T)`, the chain of these kernels reproduces
    :math:`\mathcal{N}(m, v)` exactly. A
    :class:`~pyro_diffusion.model.DiffusionModel` starts its chain from
    :math:`\mathcal{N}(0, I)` instead, so the model's marginal of
    :math:`x_0` is the Gaussian :func:`linear_chain_marginal` returns. It
    equals :math:`\mathcal{N}(m, v)` only when :math:`q(x_T) = \mathcal{N}(0, I)`,
    that is for :math:`m = 0, v = 1`, and approaches it as
    :math:`\bar\alpha_T \to 0`.

    Besides the coefficient buffers of :class:`LinearGaussianReverse`, the
    buffers ``data_mean`` and ``data_variance`` (shape ``event_shape``) contain
    :math:`m, v`, and ``marginal_loc`` and ``marginal_variance`` (shape
    ``[T + 1] + event_shape``, row ``t``) contain :math:`\mu_t, s_t`.

    :param GaussianForward forward_process: the forward process.
    :param mean: :math:`m`, a number or a tensor broadcastable to ``event_shape``.
    :param variance: :math:`v > 0`, a number or a tensor broadcastable to
        ``event_shape``.
    :param event_shape: the shape of one example.
    :raises ValueError: if a variance is not positive and finite, or a mean
        is not finite.
    """

    def __init__(self, forward_process, mean, variance, event_shape):
        event_shape = torch.Size(event_shape)
        mean = _event_tensor(mean, event_shape, "mean")
        variance = _event_tensor(variance, event_shape, "variance")
        if not torch.isfinite(mean).all():
            raise ValueError(f"the data mean must be finite, got {mean.tolist()}")
        if not (torch.isfinite(variance) & (variance > 0)).all():
            raise ValueError(
                f"the data variance must be positive and finite, got {variance.tolist()}"
            )

        # The forward marginals q(x_t) for t = 0..T, shape [T + 1] + event_shape.
        schedule = forward_process.schedule
        per_step = (-1,) + (1,) * len(event_shape)
        alphas_bar = schedule.alphas_bar.double().reshape(per_step)
        one_minus_alphas_bar = schedule.one_minus_alphas_bar.double().reshape(per_step)
        marginal_loc = alphas_bar.sqrt() * mean
        marginal_variance = alphas_bar * variance + one_minus_alphas_bar

        # Gaussian conditioning of x_{t-1} on x_t for t = 1..T.
        sqrt_alphas = schedule.sqrt_alphas.double().reshape(per_step)[1:]
        log_betas = schedule.log_betas.double().reshape(per_step)[1:]
        previous, current = marginal_variance[:-1], marginal_variance[1:]
        loc_coef = sqrt_alphas * previous / current
        loc_offset = marginal_loc[:-1] - loc_coef * marginal_loc[1:]
        log_variance = log_betas + previous.log() - current.log()

        super().__init__(forward_process, loc_coef, loc_offset, log_variance, event_shape)
        self.register_buffer("data_mean", mean)
        self.register_buffer("data_variance", variance)
        self.register_buffer("marginal_loc", marginal_loc)
        self.register_buffer("marginal_variance", marginal_variance)


def gaussian_log_likelihood(x0, mean, variance):
    r"""
    Compute :math:`\log \mathcal{N}(x_0; m, \mathrm{diag}(v))` for each example.

    :param torch.Tensor x0: shape ``[N] + event_shape``.
    :param mean: :math:`m`, broadcastable to ``event_shape``.
    :param variance: :math:`v > 0`, broadcastable to ``event_shape``.
    :returns: the log-density in nats, shape ``[N]``, float64.
    :rtype: torch.Tensor
    """
    _check_data(x0)
    event_shape = x0.shape[1:]
    x0 = x0.double()
    mean = _event_tensor(mean, event_shape, "mean")
    variance = _event_tensor(variance, event_shape, "variance")
    log_density = -0.5 * (LOG_2PI + variance.log() + (x0 - mean) ** 2 / variance)
    return _sum_event(log_density, event_shape)


def linear_chain_marginal(loc_coef, loc_offset, log_variance):
    r"""
    Compute the marginal of :math:`x_0` under the chain
    :math:`x_T \sim \mathcal{N}(0, I)`,
    :math:`x_{t-1} \mid x_t \sim \mathcal{N}(a_t x_t + b_t, c_t)`, the
    generative process of a :class:`~pyro_diffusion.model.DiffusionModel`
    with a :class:`LinearGaussianReverse` kernel and a Gaussian decoder.
    It is Gaussian with moments from the recursion, for ``t = T, ..., 1``,

    .. math::

        m_{t-1} = a_t m_t + b_t, \qquad v_{t-1} = a_t^2 v_t + c_t,
        \qquad m_T = 0, \quad v_T = 1.

    :param torch.Tensor loc_coef: :math:`a_t`, shape ``[T] + s``.
    :param torch.Tensor loc_offset: :math:`b_t`, shape ``[T] + s``.
    :param torch.Tensor log_variance: :math:`\log c_t`, shape ``[T] + s``.
    :returns: ``(mean, variance)`` of :math:`x_0`, each of the broadcast
        shape ``s`` of the three inputs, float64.
    :rtype: tuple[torch.Tensor, torch.Tensor]
    """
    loc_coef, loc_offset, log_variance = torch.broadcast_tensors(
        *(torch.as_tensor(value, dtype=torch.float64) for value in (loc_coef, loc_offset, log_variance))
    )
    if loc_coef.dim() < 1 or loc_coef.shape[0] < 1:
        raise ValueError(
            f"the coefficients need a leading dimension of T >= 1 steps, got shape {tuple(loc_coef.shape)}"
        )
    mean = torch.zeros_like(loc_coef[0])
    variance = torch.ones_like(loc_coef[0])
    for index in range(loc_coef.shape[0] - 1, -1, -1):
        mean = loc_coef[index] * mean + loc_offset[index]
        variance = loc_coef[index] ** 2 * variance + log_variance[index].exp()
    return mean, variance


def closed_form_terms(forward_process, loc_coef, loc_offset, log_variance, x0):
    r"""
    Evaluate every term of the bound in closed form for the reverse kernel
    :math:`p(x_{t-1} \mid x_t) = \mathcal{N}(a_t x_t + b_t, c_t)` with a
    Gaussian decoder, the expectations that
    :func:`~pyro_diffusion.likelihood.bound_terms` estimates with one
    sample each. Per dimension, with
    :math:`x_t \sim q(x_t \mid x_0) = \mathcal{N}(\sqrt{\bar\alpha_t}\, x_0, 1 - \bar\alpha_t)`:

    The prior term is the KL divergence of two Gaussians,

    .. math::

        L_T = \frac{1}{2}\left(\bar\alpha_T x_0^2 + (1 - \bar\alpha_T) - 1
            - \log(1 - \bar\alpha_T)\right).

    For ``t = 2..T``, the forward posterior has mean
    :math:`\tilde\mu_t = P_0 x_0 + P_t x_t` and variance :math:`\tilde\beta_t`,
    so the mean difference :math:`\tilde\mu_t - a_t x_t - b_t = d x_t + e`
    with :math:`d = P_t - a_t` and :math:`e = P_0 x_0 - b_t` is linear in
    :math:`x_t`, and

    .. math::

        L_{t-1} = \frac{1}{2}\left(\log\frac{c_t}{\tilde\beta_t}
            + \frac{\tilde\beta_t}{c_t} - 1
            + \frac{(d \sqrt{\bar\alpha_t}\, x_0 + e)^2 + d^2 (1 - \bar\alpha_t)}{c_t}\right).

    The decoder term, with :math:`r = x_0 - a_1 \sqrt{\bar\alpha_1}\, x_0 - b_1`, is

    .. math::

        -L_0 = \mathbb{E}\log\mathcal{N}(x_0; a_1 x_1 + b_1, c_1)
            = -\frac{1}{2}\left(\log(2\pi c_1) + \frac{r^2 + a_1^2 (1 - \bar\alpha_1)}{c_1}\right).

    Each term is summed over the event dimensions.

    :param GaussianForward forward_process: the forward process.
    :param torch.Tensor loc_coef: :math:`a_t`, shape ``[T] + s``.
    :param torch.Tensor loc_offset: :math:`b_t`, shape ``[T] + s``.
    :param torch.Tensor log_variance: :math:`\log c_t`, shape ``[T] + s``.
    :param torch.Tensor x0: data, shape ``[N] + event_shape``, with ``s``
        broadcastable to ``event_shape``.
    :returns: the terms in nats, float64: ``prior`` of shape ``[N]``,
        ``diffusion`` of shape ``[N, T - 1]`` (column ``t - 2`` for step ``t``)
        and ``decoder`` of shape ``[N]``.
    :rtype: ~pyro_diffusion.likelihood.BoundTerms
    """
    _check_data(x0)
    event_shape = x0.shape[1:]
    x0 = x0.double()
    num_steps = forward_process.num_steps
    loc_coef = _per_step(loc_coef, num_steps, event_shape, "loc_coef")
    loc_offset = _per_step(loc_offset, num_steps, event_shape, "loc_offset")
    log_variance = _per_step(log_variance, num_steps, event_shape, "log_variance")
    variance = log_variance.exp()
    schedule = forward_process.schedule

    def at(name, steps):
        values = getattr(schedule, name).double()[steps]
        return values.reshape(values.shape + (1,) * len(event_shape))

    # 1. The prior term L_T.
    last = torch.tensor(num_steps)
    mean_last = at("sqrt_alphas_bar", last) * x0
    variance_last = at("one_minus_alphas_bar", last)
    prior = 0.5 * (mean_last**2 + variance_last - 1 - variance_last.log())

    # 2. The diffusion terms L_{t-1}, steps along dimension 1: [N, T - 1] + event_shape.
    steps = torch.arange(2, num_steps + 1)
    x = x0.unsqueeze(1)
    posterior_variance = at("posterior_variance", steps)
    slope = at("posterior_coef_xt", steps) - loc_coef[steps - 1]
    intercept = at("posterior_coef_x0", steps) * x - loc_offset[steps - 1]
    mean_difference = slope * at("sqrt_alphas_bar", steps) * x + intercept
    expected_square = mean_difference**2 + slope**2 * at("one_minus_alphas_bar", steps)
    step_variance = variance[steps - 1]
    diffusion = 0.5 * (
        log_variance[steps - 1]
        - posterior_variance.log()
        + posterior_variance / step_variance
        - 1
        + expected_square / step_variance
    )

    # 3. The decoder term E log p(x_0 | x_1).
    first = torch.tensor(1)
    residual = x0 - loc_coef[0] * at("sqrt_alphas_bar", first) * x0 - loc_offset[0]
    spread = loc_coef[0] ** 2 * at("one_minus_alphas_bar", first)
    decoder = -0.5 * (LOG_2PI + log_variance[0] + (residual**2 + spread) / variance[0])

    return BoundTerms(
        prior=_sum_event(prior.expand_as(x0), event_shape),
        diffusion=_sum_event(diffusion, event_shape),
        decoder=_sum_event(decoder, event_shape),
    )


def closed_form_bound(forward_process, loc_coef, loc_offset, log_variance, x0):
    r"""
    Compute the bound :math:`\mathcal{L}(x_0) = -L_T - \sum_{t=2}^T L_{t-1} - L_0`
    of each example in closed form. :func:`closed_form_terms` describes the
    terms and the shapes of the arguments. For a :class:`LinearGaussianReverse`
    ``kernel``, call it as::

        closed_form_bound(kernel.forward_process, kernel.loc_coef,
                          kernel.loc_offset, kernel.log_variance, x0)

    :returns: the bound in nats, shape ``[N]``, float64.
    :rtype: torch.Tensor
    """
    return closed_form_terms(forward_process, loc_coef, loc_offset, log_variance, x0).elbo()
