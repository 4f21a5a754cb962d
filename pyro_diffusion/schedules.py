r"""
Beta schedules of the Gaussian forward process and the quantities derived
from them.

Every schedule is a float64 tensor ``betas`` of shape ``[T]`` containing
:math:`\beta_1, \dots, \beta_T`. :class:`BetaSchedule` computes each derived
quantity once in float64 and keeps it as its own buffer. Casting a module
with ``.float()`` or ``.half()`` then rounds each stored value but never
recomputes a difference such as :math:`1 - \bar\alpha_t` in low precision,
where it would round to zero for small :math:`t`.

References

[1] J. Sohl-Dickstein, E. A. Weiss, N. Maheswaranathan, S. Ganguli,
    "Deep Unsupervised Learning using Nonequilibrium Thermodynamics", 2015.
[2] J. Ho, A. Jain, P. Abbeel, "Denoising Diffusion Probabilistic Models",
    2020.
[3] A. Nichol, P. Dhariwal, "Improved Denoising Diffusion Probabilistic
    Models", 2021.
[4] D. P. Kingma, T. Salimans, B. Poole, J. Ho, "Variational Diffusion
    Models", 2021.
"""

import enum
import math

import torch
from torch import nn
from torch.distributions import biject_to, constraints

from .options import parse_option

__all__ = [
    "BetaSchedule",
    "LearnedBetaSchedule",
    "ScheduleKind",
    "cosine_betas",
    "gather_steps",
    "linear_betas",
    "log_snr_betas",
    "make_betas",
    "paper_betas",
    "schedule_tables",
    "validate_betas",
]


class ScheduleKind(str, enum.Enum):
    """Names of the fixed beta schedules."""

    #: :math:`\beta_t = 1 / (T - t + 2)` for :math:`t \ge 2` and a small fixed
    #: :math:`\beta_1`, the schedule of [1].
    PAPER = "paper"
    #: :math:`\beta_t` linear from ``1e-4`` to ``0.02`` at ``T = 1000``, [2].
    LINEAR = "linear"
    #: :math:`\bar\alpha_t` following a squared cosine, [3].
    COSINE = "cosine"
    #: The log signal-to-noise ratio falling linearly from the first step
    #: to the last, [4]; fine steps at every noise level.
    LOG_SNR = "log-snr"

    @classmethod
    def parse(cls, value):
        """
        Convert a string to a :class:`ScheduleKind`.

        :raises ValueError: if ``value`` names no schedule.
        """
        return parse_option(cls, value, "beta schedule")


def _check_num_steps(num_steps):
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(
            f"the number of diffusion steps T must be an integer >= 1, got {num_steps!r}"
        )


def paper_betas(num_steps, beta_1=1e-2):
    r"""
    Build the fixed schedule of [1], in which every step after the first
    removes the same share, :math:`1/T`, of the signal's variance.

    .. math::

        \beta_t = \frac{1}{T - t + 2}, \quad t = 2, \dots, T,

    so that :math:`\prod_{s=2}^{t} (1 - \beta_s) = (T - t + 1) / T` falls
    linearly to :math:`1/T`. This is the binomial schedule
    :math:`1/(T - t + 1)` of [1] shifted by one step, which keeps
    :math:`\beta_T = 1/2 < 1` and so every Gaussian kernel invertible.
    :math:`\beta_1` is fixed and small, as in [1], to keep the last reverse
    step from overfitting.

    :param int num_steps: the number of steps ``T``.
    :param float beta_1: the first step's variance, in ``(0, 1)``.
    :returns: ``betas`` of shape ``[T]``, float64.
    :rtype: torch.Tensor
    """
    _check_num_steps(num_steps)
    t = torch.arange(1, num_steps + 1, dtype=torch.float64)
    betas = 1.0 / (num_steps - t + 2.0)
    betas[0] = beta_1
    return validate_betas(betas)


def linear_betas(num_steps, start=1e-4, end=2e-2):
    r"""
    Build the linear schedule of [2], rescaled so that ``T`` steps destroy as much
    signal as 1000 steps do in [2]:

    .. math::

        \beta_t = \frac{1000}{T}\left(b_0 + (b_1 - b_0)\frac{t - 1}{T - 1}\right).

    :param int num_steps: the number of steps ``T``.
    :param float start: :math:`b_0`, the value of :math:`\beta_1` at ``T = 1000``.
    :param float end: :math:`b_1`, the value of :math:`\beta_T` at ``T = 1000``.
    :returns: ``betas`` of shape ``[T]``, float64.
    :rtype: torch.Tensor
    """
    _check_num_steps(num_steps)
    factor = 1000.0 / num_steps
    betas = torch.linspace(start * factor, end * factor, num_steps, dtype=torch.float64)
    return validate_betas(betas.clamp(max=0.999))


def cosine_betas(num_steps, offset=8e-3, max_beta=0.999):
    r"""
    Build the cosine schedule of [3], Eq. (17):

    .. math::

        \bar\alpha_t = \frac{f(t)}{f(0)}, \quad
        f(t) = \cos^2\left(\frac{t/T + s}{1 + s}\frac{\pi}{2}\right), \quad
        \beta_t = \min\left(1 - \frac{\bar\alpha_t}{\bar\alpha_{t-1}}, \beta_{max}\right).

    :param int num_steps: the number of steps ``T``.
    :param float offset: :math:`s`, which keeps :math:`\beta_1` away from zero.
    .. note:: For small ``T`` the last steps have :math:`\beta_t` near
        :math:`\beta_{max}`, so the reverse mean divides by
        :math:`\sqrt{1 - \beta_t} \approx 0.03`. Sampling then amplifies
        the network's errors; at ``T = 20`` about 1% of samples of a 2-D
        Gaussian landed far from the data in one measured run. Prefer
        ``"log-snr"`` or ``"paper"`` below a few hundred steps.

    :param float max_beta: :math:`\beta_{max}`, which keeps :math:`\beta_T < 1`.
    :returns: ``betas`` of shape ``[T]``, float64.
    :rtype: torch.Tensor
    """
    _check_num_steps(num_steps)
    steps = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    f = torch.cos((steps + offset) / (1 + offset) * math.pi / 2) ** 2
    alphas_bar = f / f[0]
    betas = 1 - alphas_bar[1:] / alphas_bar[:-1]
    return validate_betas(betas.clamp(min=1e-8, max=max_beta))


def log_snr_betas(num_steps, beta_1=1e-4, final_log_snr=-7.0):
    r"""
    Build a schedule whose log signal-to-noise ratio
    :math:`\lambda_t = \log(\bar\alpha_t / (1 - \bar\alpha_t))` falls
    linearly in ``t``, the fixed schedule of [4] in discrete time:

    .. math::

        \lambda_t = \lambda_1 + (\lambda_T - \lambda_1)\frac{t - 1}{T - 1},
        \quad \lambda_1 = \mathrm{logit}(1 - \beta_1), \quad
        \bar\alpha_t = \mathrm{sigmoid}(\lambda_t), \quad
        \beta_t = 1 - \bar\alpha_t / \bar\alpha_{t-1}.

    Each step shrinks the noise-to-signal ratio by the same factor, so data
    concentrated near a thin set (a curve, a lattice of integer levels) are
    resolved gradually down to the scale :math:`\sqrt{\beta_1}`.

    :param int num_steps: the number of steps ``T``.
    :param float beta_1: the first step's variance, in ``(0, 1)``.
    :param float final_log_snr: :math:`\lambda_T`, below :math:`\lambda_1`.
    :returns: ``betas`` of shape ``[T]``, float64.
    :rtype: torch.Tensor
    """
    _check_num_steps(num_steps)
    if not 0 < beta_1 < 1:
        raise ValueError(f"beta_1 = {beta_1!r} is outside (0, 1): pick a small value such as 1e-4")
    first = math.log((1 - beta_1) / beta_1)
    if not final_log_snr < first:
        raise ValueError(
            f"beta_1 = {beta_1!r} gives a first log SNR of {first:.3f}, not above the final "
            f"{final_log_snr}: use a smaller beta_1"
        )
    if num_steps == 1:
        return validate_betas(torch.tensor([beta_1], dtype=torch.float64))
    log_snr = torch.linspace(first, final_log_snr, num_steps, dtype=torch.float64)
    log_alphas_bar = torch.nn.functional.logsigmoid(log_snr)
    previous = torch.cat([log_alphas_bar.new_zeros(1), log_alphas_bar[:-1]])
    betas = -torch.expm1(log_alphas_bar - previous)
    return validate_betas(betas)


def make_betas(kind, num_steps, **kwargs):
    """
    Build a fixed schedule by name.

    :param kind: ``"paper"``, ``"linear"``, ``"cosine"`` or ``"log-snr"``.
    :type kind: str or ScheduleKind
    :param int num_steps: the number of steps ``T``.
    :param kwargs: options of the chosen schedule function.
    :returns: ``betas`` of shape ``[T]``, float64.
    :rtype: torch.Tensor
    """
    kind = ScheduleKind.parse(kind)
    builders = {
        ScheduleKind.PAPER: paper_betas,
        ScheduleKind.LINEAR: linear_betas,
        ScheduleKind.COSINE: cosine_betas,
        ScheduleKind.LOG_SNR: log_snr_betas,
    }
    return builders[kind](num_steps, **kwargs)


def validate_betas(betas):
    """
    Check that ``betas`` is a 1-D tensor of values strictly inside ``(0, 1)``.

    :param torch.Tensor betas: shape ``[T]``.
    :returns: ``betas`` as float64.
    :raises ValueError: naming the first offending value.
    """
    betas = torch.as_tensor(betas, dtype=torch.float64)
    if betas.dim() != 1 or betas.numel() < 1:
        raise ValueError(
            f"betas must be a 1-D tensor with at least one step, got shape {tuple(betas.shape)}"
        )
    bad = ~((betas > 0) & (betas < 1))
    if bad.any():
        index = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"beta_{index + 1} = {betas[index].item()!r} is outside (0, 1): "
            "every step of a Gaussian diffusion needs 0 < beta_t < 1"
        )
    return betas


def gather_steps(values, t, like):
    """
    Look up per-step ``values`` at the time steps ``t``, shaped to broadcast
    against ``like``.

    :param torch.Tensor values: shape ``[T + 1]``, indexed by ``t``.
    :param torch.Tensor t: integer time steps of shape ``batch_shape``.
    :param torch.Tensor like: shape ``batch_shape + event_shape``; the result
        takes its dtype.
    :returns: shape ``batch_shape + (1,) * len(event_shape)``.
    """
    picked = values[t]
    extra = like.dim() - picked.dim()
    return picked.to(like.dtype).reshape(picked.shape + (1,) * max(extra, 0))


#: The names of the per-step tables of a schedule, each of shape ``[T + 1]``.
TABLE_NAMES = (
    "betas",
    "log_betas",
    "alphas_bar",
    "one_minus_alphas_bar",
    "sqrt_alphas",
    "sqrt_alphas_bar",
    "sqrt_one_minus_alphas_bar",
    "posterior_variance",
    "log_posterior_variance_clipped",
    "logit_betas",
    "posterior_coef_x0",
    "posterior_coef_xt",
)


def schedule_tables(betas):
    r"""
    Compute the per-step quantities of a schedule from :math:`\beta_{1..T}`.

    Every operation is differentiable, so a learned schedule passes
    gradients from each table back to its betas. Index 0 of each table contains
    the identity step, :math:`\beta_0 = 0` and :math:`\bar\alpha_0 = 1`.

    :param torch.Tensor betas: shape ``[T]``, values in ``(0, 1)``, float64.
    :returns: a dict from each name in :data:`TABLE_NAMES` to a tensor of
        shape ``[T + 1]``; :class:`BetaSchedule` describes each.
    :rtype: dict
    """
    zero = betas.new_zeros(1)
    betas = torch.cat([zero, betas])
    log_alphas_bar = torch.cumsum(torch.log1p(-betas), 0)
    alphas_bar = log_alphas_bar.exp()
    one_minus_alphas_bar = -torch.expm1(log_alphas_bar)
    # Eq. (7) in [2]: the forward posterior q(x_{t-1} | x_t, x_0).
    previous_one_minus = torch.cat([zero, one_minus_alphas_bar[:-1]])
    previous_alphas_bar = torch.cat([betas.new_ones(1), alphas_bar[:-1]])
    is_step = torch.arange(len(betas), device=betas.device) > 0
    safe_denominator = torch.where(is_step, one_minus_alphas_bar, torch.ones_like(betas))
    posterior_variance = betas * previous_one_minus / safe_denominator
    # The reverse variance at t = 1 cannot fall to the zero posterior
    # variance, so its lower bound there is the next step's, as in [3].
    second = posterior_variance[2:3] if len(betas) > 2 else betas[1:2]
    variance_clipped = torch.cat([betas.new_ones(1), second, posterior_variance[2:]])
    betas_safe = torch.where(is_step, betas, torch.full_like(betas, 0.5))
    log_betas = betas_safe.log()
    # sqrt has an infinite derivative at the identity step's zero, which
    # would turn the zero gradient there into NaN.
    sqrt_one_minus = torch.where(is_step, safe_denominator.sqrt(), torch.zeros_like(betas))
    return {
        "betas": betas,
        "log_betas": log_betas,
        "alphas_bar": alphas_bar,
        "one_minus_alphas_bar": one_minus_alphas_bar,
        "sqrt_alphas": (1 - betas).sqrt(),
        "sqrt_alphas_bar": alphas_bar.sqrt(),
        "sqrt_one_minus_alphas_bar": sqrt_one_minus,
        "posterior_variance": posterior_variance,
        "log_posterior_variance_clipped": variance_clipped.log(),
        "logit_betas": log_betas - torch.log1p(-betas_safe),
        "posterior_coef_x0": previous_alphas_bar.sqrt() * betas / safe_denominator,
        "posterior_coef_xt": (1 - betas).sqrt() * previous_one_minus / safe_denominator,
    }


class BetaSchedule(nn.Module):
    r"""
    A fixed beta schedule and its derived quantities as buffers of shape
    ``[T + 1]``, indexed by the time step ``t = 0, ..., T``. Index 0 contains the
    values of the identity step (:math:`\beta_0 = 0`, :math:`\bar\alpha_0 = 1`).

    The buffers, each computed in float64:

    - ``betas``: :math:`\beta_t`.
    - ``alphas_bar``: :math:`\bar\alpha_t = \prod_{s \le t} (1 - \beta_s)`.
    - ``one_minus_alphas_bar``: :math:`1 - \bar\alpha_t`, from ``expm1``.
    - ``sqrt_alphas_bar``, ``sqrt_one_minus_alphas_bar``.
    - ``posterior_variance``: :math:`\tilde\beta_t = \beta_t (1 - \bar\alpha_{t-1}) / (1 - \bar\alpha_t)`,
      exactly zero at ``t = 1``.
    - ``log_posterior_variance_clipped``: :math:`\log\tilde\beta_t`, with
      :math:`\tilde\beta_2` in place of the zero at ``t = 1``: the lower
      end of the reverse variance.
    - ``log_betas`` and ``logit_betas``: :math:`\log\beta_t` and
      :math:`\log(\beta_t / (1 - \beta_t))`.
    - ``posterior_coef_x0`` and ``posterior_coef_xt``: the two weights of
      the posterior mean :math:`\tilde\mu_t(x_t, x_0)`.

    :param torch.Tensor betas: shape ``[T]``, values in ``(0, 1)``.
    """

    def __init__(self, betas):
        super().__init__()
        tables = schedule_tables(validate_betas(betas))
        self.num_steps = len(tables["betas"]) - 1
        for name, value in tables.items():
            self.register_buffer(name, value)

    @classmethod
    def from_name(cls, kind, num_steps, **kwargs):
        """
        Build a :class:`BetaSchedule` from a schedule name; see :func:`make_betas`.
        """
        return cls(make_betas(kind, num_steps, **kwargs))

    def gather(self, name, t, like):
        """
        Look up the buffer ``name`` at the time steps ``t``, shaped to
        broadcast against ``like``.

        :param str name: a buffer name, e.g. ``"alphas_bar"``.
        :param torch.Tensor t: integer time steps of shape ``batch_shape``.
        :param torch.Tensor like: a tensor of shape ``batch_shape + event_shape``;
            the result takes its dtype and has trailing singleton dimensions
            for the event dimensions.
        :returns: shape ``batch_shape + (1,) * len(event_shape)``.
        :rtype: torch.Tensor
        """
        return gather_steps(getattr(self, name), t, like)

    def extra_repr(self):
        return f"num_steps={self.num_steps}"


class LearnedBetaSchedule(nn.Module):
    r"""
    A beta schedule learned by SVI together with the reverse process, as in
    [1], Section 2.4.1: :math:`\beta_1` stays fixed, and
    :math:`\beta_2, \dots, \beta_T` are parameters kept inside ``(0, 1)`` by
    Pyro's ``unit_interval`` constraint,

    .. math::

        \beta_t = \mathrm{sigmoid}(u_t), \quad t = 2, \dots, T,

    with the unconstrained values :math:`u_t` stored in the parameter
    ``unconstrained_betas`` of shape ``[T - 1]``. The forward process (the
    guide) reads the schedule, so the betas are parameters of the guide.
    Because the guide's samples are reparameterized (the "frozen noise" of
    [1]), the gradient of the bound reaches the betas through every site.

    The derived tables of :class:`BetaSchedule` are attributes of the same
    names, recomputed in float64 from the current parameters on each access
    so that their gradients flow back to :math:`u`.

    :param torch.Tensor initial_betas: shape ``[T]``, the starting
        schedule, values in ``(0, 1)``; its first value is the fixed
        :math:`\beta_1`.
    """

    #: Keeps a learned beta below 1 in float64, where sigmoid rounds to 1
    #: for inputs above about 37.
    max_beta = 1.0 - 1e-9

    def __init__(self, initial_betas):
        super().__init__()
        initial_betas = validate_betas(initial_betas)
        self.num_steps = len(initial_betas)
        self.register_buffer("first_beta", initial_betas[:1].clone())
        transform = biject_to(constraints.unit_interval)
        rest = initial_betas[1:].clamp(max=self.max_beta)
        self.unconstrained_betas = nn.Parameter(transform.inv(rest).clone())
        self._cached_key = None
        self._cached_tables = None

    @classmethod
    def from_name(cls, kind, num_steps, **kwargs):
        """
        Start a learned schedule from a fixed one; see :func:`make_betas`.
        """
        return cls(make_betas(kind, num_steps, **kwargs))

    def current_betas(self):
        r"""
        :returns: :math:`\beta_1, \dots, \beta_T`, shape ``[T]``, float64,
            differentiable in ``unconstrained_betas``.
        """
        transform = biject_to(constraints.unit_interval)
        rest = transform(self.unconstrained_betas.double()).clamp(max=self.max_beta)
        return torch.cat([self.first_beta.double(), rest])

    def tables(self):
        """
        :returns: every table of :class:`BetaSchedule` for the current betas,
            a dict of float64 tensors of shape ``[T + 1]``.
        """
        if torch.is_grad_enabled():
            return schedule_tables(self.current_betas())
        # Without gradients (sampling, evaluation) the tables are reused until
        # the parameter changes; every in-place update bumps its version.
        parameter = self.unconstrained_betas
        key = (parameter.data_ptr(), parameter._version, parameter.device, parameter.dtype)
        if key != self._cached_key:
            self._cached_tables = schedule_tables(self.current_betas())
            self._cached_key = key
        return self._cached_tables

    def __getattr__(self, name):
        if name in TABLE_NAMES:
            return self.tables()[name]
        return super().__getattr__(name)

    def gather(self, name, t, like):
        """Look up the table ``name`` at ``t``; see :meth:`BetaSchedule.gather`."""
        return gather_steps(self.tables()[name], t, like)

    def frozen(self):
        """
        :returns: a :class:`BetaSchedule` holding the current betas as fixed buffers.
        """
        with torch.no_grad():
            return BetaSchedule(self.current_betas())

    def extra_repr(self):
        return f"num_steps={self.num_steps}, learned=beta_2..beta_{self.num_steps}"
