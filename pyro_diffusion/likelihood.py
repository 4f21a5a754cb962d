r"""
The bound on the log-likelihood, term by term, in nats and bits.

For one example the ELBO of the model/guide pair is

.. math::

    \mathcal{L}(x_0) = -\underbrace{\mathrm{KL}(q(x_T \mid x_0) \,\|\, p(x_T))}_{L_T}
        - \sum_{t=2}^{T} \underbrace{\mathbb{E}_{q(x_t \mid x_0)}
            \mathrm{KL}(q(x_{t-1} \mid x_t, x_0) \,\|\, p(x_{t-1} \mid x_t))}_{L_{t-1}}
        + \underbrace{\mathbb{E}_{q(x_1 \mid x_0)} \log p(x_0 \mid x_1)}_{-L_0},

Eq. (14) of [1] without its unit-variance substitution for
:math:`\mathbb{E}\log p(x_T)`, in the notation of [2], Eq. (5).
:func:`bound_terms` evaluates every term for every example, with one
sample of :math:`x_t` per step and analytic KL divergences.

References

[1] J. Sohl-Dickstein et al., "Deep Unsupervised Learning using
    Nonequilibrium Thermodynamics", 2015.
[2] J. Ho, A. Jain, P. Abbeel, "Denoising Diffusion Probabilistic Models",
    2020.
"""

import math
from dataclasses import dataclass

import torch

from pyro.distributions.kl import kl_divergence

from .distributions import draw

__all__ = [
    "NULL_BITS_PER_DIM",
    "BoundTerms",
    "bound_terms",
    "heldout_bound",
    "heldout_importance_log_likelihood",
    "importance_log_likelihood",
    "nats_to_bits",
]

LN2 = math.log(2.0)

#: The log-likelihood of the isotropic unit Gaussian in bits per dimension,
#: :math:`L_{null} = -\frac{1}{2}\log_2(2 \pi e) \approx -2.047`, averaged
#: over data of unit variance.
NULL_BITS_PER_DIM = -0.5 * math.log2(2 * math.pi * math.e)


def nats_to_bits(value):
    """Convert nats to bits."""
    return value / LN2


@dataclass
class BoundTerms:
    """
    The terms of the bound for a batch of examples, in nats.

    :ivar torch.Tensor prior: :math:`L_T`, shape ``[N]``.
    :ivar torch.Tensor diffusion: :math:`L_{t-1}` for ``t = 2..T``, shape ``[N, T - 1]``.
    :ivar torch.Tensor decoder: :math:`\\log p(x_0 \\mid x_1)`, shape ``[N]``.
    """

    prior: torch.Tensor
    diffusion: torch.Tensor
    decoder: torch.Tensor

    def elbo(self):
        """:returns: the bound per example in nats, shape ``[N]``."""
        return self.decoder - self.prior - self.diffusion.sum(-1)


@torch.no_grad()
def bound_terms(diffusion, x0, generator=None):
    """
    Evaluate every term of the bound.

    :param DiffusionModel diffusion: the model.
    :param torch.Tensor x0: data, shape ``[N] + event_shape``.
    :param torch.Generator generator: an optional random stream for the
        forward samples.
    :rtype: BoundTerms
    """
    diffusion._check_data(x0)
    forward = diffusion.forward_process
    reverse = diffusion.reverse
    T = diffusion.num_steps
    batch_size = x0.shape[0]

    def noisy(t):
        return draw(forward.marginal(x0, torch.tensor(t, device=x0.device)), generator)

    # 1. The prior term L_T, analytic.
    prior = diffusion.prior_distribution(batch_size, x0)
    prior_kl = kl_divergence(forward.marginal(x0, T), prior).expand(batch_size)

    # 2. The diffusion terms L_{t-1}, analytic given one sample of x_t.
    diffusion_kl = x0.new_zeros(batch_size, max(T - 1, 0))
    for t in range(2, T + 1):
        step = torch.tensor(t, device=x0.device)
        x_t = noisy(t)
        kl = kl_divergence(forward.posterior(x_t, x0, step), reverse.distribution(x_t, step))
        diffusion_kl[:, t - 2] = kl

    # 3. The decoder term log p(x_0 | x_1), one sample of x_1.
    decoder = diffusion.decoder_distribution(noisy(1)).log_prob(x0)
    return BoundTerms(prior=prior_kl, diffusion=diffusion_kl, decoder=decoder)


@torch.no_grad()
def heldout_bound(diffusion, x0, batch_size=500, generator=None):
    """
    Compute the bound on held-out data in bits, as reported in Table 1 of [1].

    :param DiffusionModel diffusion: the model.
    :param torch.Tensor x0: held-out data, shape ``[N] + event_shape``,
        scaled as in training.
    :param int batch_size: examples evaluated at once.
    :returns: a dict with keys

        - ``elbo_bits``: the mean bound per example, in bits (higher is better);
        - ``elbo_bits_stderr``: its standard error over examples, in bits;
        - ``elbo_bits_per_dim``: ``elbo_bits`` divided by the dimension ``D``;
        - ``l_null_bits``: :math:`D \\cdot L_{null}`, the unit Gaussian's
          expected log-likelihood per example, in bits; for a binary
          (binomial) model, the log-likelihood of the independent
          Bernoulli model with the data's mean activity :math:`\\bar{x}`,
          :math:`D(\\bar{x}\\log_2\\bar{x} + (1 - \\bar{x})\\log_2(1 - \\bar{x}))`,
          which is the Bernoulli(0.2) null model of [1] on the heartbeat;
        - ``k_minus_l_null_bits``: ``elbo_bits - l_null_bits``;
        - ``per_example_bits``: the bound of every example, a tensor ``[N]``;
        - ``prior_bits``, ``diffusion_bits``, ``decoder_bits``: the means of
          the three terms per example, in bits.
    :rtype: dict
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    diffusion._check_data(x0)
    chunks = [bound_terms(diffusion, batch, generator) for batch in x0.split(batch_size)]
    elbo = nats_to_bits(torch.cat([c.elbo() for c in chunks]))
    dim = diffusion.event_shape.numel()
    count = elbo.numel()
    stderr = float(elbo.std() / math.sqrt(count)) if count > 1 else float("nan")
    l_null = dim * NULL_BITS_PER_DIM
    if not diffusion.reverse.has_gaussian_steps:
        activity = float(x0.double().mean().clamp(1e-12, 1 - 1e-12))
        l_null = dim * (activity * math.log2(activity) + (1 - activity) * math.log2(1 - activity))
    mean = float(elbo.mean())
    return {
        "elbo_bits": mean,
        "elbo_bits_stderr": stderr,
        "elbo_bits_per_dim": mean / dim,
        "l_null_bits": l_null,
        "k_minus_l_null_bits": mean - l_null,
        "per_example_bits": elbo,
        "prior_bits": float(nats_to_bits(torch.cat([c.prior for c in chunks])).mean()),
        "diffusion_bits": float(
            nats_to_bits(torch.cat([c.diffusion.sum(-1) for c in chunks])).mean()
        ),
        "decoder_bits": float(nats_to_bits(torch.cat([c.decoder for c in chunks])).mean()),
    }


@torch.no_grad()
def importance_log_likelihood(diffusion, x0, num_samples, generator=None):
    r"""
    Estimate :math:`\log p(x_0)` by importance sampling over ``K`` forward
    trajectories, Eq. (9) of [1]:

    .. math::

        \log p(x_0) \approx \log \frac{1}{K} \sum_{k=1}^{K}
            \frac{p(x^{(k)}_{0:T})}{q(x^{(k)}_{1:T} \mid x_0)},
        \qquad x^{(k)}_{1:T} \sim q(x_{1:T} \mid x_0).

    For ``K = 1`` its expectation is the bound; its expectation never
    decreases with ``K`` and approaches :math:`\log p(x_0)` as ``K`` grows.
    The cost is ``K * T`` network evaluations per example.

    :param DiffusionModel diffusion: the model.
    :param torch.Tensor x0: data, shape ``[N] + event_shape``.
    :param int num_samples: ``K >= 1``.
    :param torch.Generator generator: an optional random stream.
    :returns: the estimate for each example in nats, shape ``[N]``.
    :rtype: torch.Tensor
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"the number of importance samples K must be an integer >= 1, got {num_samples!r}")
    diffusion._check_data(x0)
    # Trajectories run in chunks of at most MAX_TRAJECTORY_ROWS rows, so
    # memory does not grow with K.
    per_chunk = max(1, MAX_TRAJECTORY_ROWS // x0.shape[0])
    chunks = [
        _importance_log_weights(diffusion, x0, min(per_chunk, num_samples - start), generator)
        for start in range(0, num_samples, per_chunk)
    ]
    return torch.logsumexp(torch.cat(chunks), 0) - math.log(num_samples)


#: The maximum number of forward trajectories that :func:`importance_log_likelihood` runs at once.
MAX_TRAJECTORY_ROWS = 8192


def _importance_log_weights(diffusion, x0, num_samples, generator):
    """Compute the log importance weights of ``num_samples`` trajectories per example, shape ``[K, N]``."""
    forward = diffusion.forward_process
    reverse = diffusion.reverse
    T = diffusion.num_steps
    batch_size = x0.shape[0]
    # [K * N] + event_shape: every example repeated once per trajectory.
    data = x0.unsqueeze(0).expand((num_samples,) + x0.shape).reshape((-1,) + x0.shape[1:])

    # 1. The start of the trajectory: log p(x_T) - log q(x_T | x_0).
    proposal = forward.marginal(data, T)
    x = draw(proposal, generator)
    prior = diffusion.prior_distribution(len(data), data)
    log_weight = prior.log_prob(x) - proposal.log_prob(x)

    # 2. Each step: log p(x_{t-1} | x_t) - log q(x_{t-1} | x_t, x_0).
    for t in range(T, 1, -1):
        step = torch.tensor(t, device=x0.device)
        proposal = forward.posterior(x, data, step)
        x_prev = draw(proposal, generator)
        log_weight = log_weight + reverse.distribution(x, step).log_prob(x_prev) - proposal.log_prob(x_prev)
        x = x_prev

    # 3. The observed data: log p(x_0 | x_1).
    log_weight = log_weight + diffusion.decoder_distribution(x).log_prob(data)
    return log_weight.reshape(num_samples, batch_size)


@torch.no_grad()
def heldout_importance_log_likelihood(diffusion, x0, num_samples, batch_size=100, generator=None):
    """
    Estimate the log-likelihood of held-out data in bits by importance sampling.

    :param DiffusionModel diffusion: the model.
    :param torch.Tensor x0: held-out data, shape ``[N] + event_shape``.
    :param int num_samples: ``K``, trajectories per example.
    :param int batch_size: examples evaluated at once (memory grows as
        ``K * batch_size``).
    :returns: a dict with ``log_likelihood_bits`` (the mean over examples,
        in bits per example), ``log_likelihood_bits_stderr`` (its standard
        error over examples), ``log_likelihood_bits_per_dim`` and
        ``num_samples``.
    :rtype: dict
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    diffusion._check_data(x0)
    estimates = torch.cat(
        [importance_log_likelihood(diffusion, batch, num_samples, generator) for batch in x0.split(batch_size)]
    )
    bits = nats_to_bits(estimates)
    count = bits.numel()
    mean = float(bits.mean())
    return {
        "log_likelihood_bits": mean,
        "log_likelihood_bits_stderr": float(bits.std() / math.sqrt(count)) if count > 1 else float("nan"),
        "log_likelihood_bits_per_dim": mean / diffusion.event_shape.numel(),
        "num_samples": num_samples,
    }
