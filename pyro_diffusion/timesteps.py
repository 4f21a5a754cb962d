r"""
Time-step sampling for the estimator of the bound whose cost does not grow
with ``T``.

The bound's diffusion part is a sum over ``t = 2..T``. Drawing one step per
example from a proposal :math:`\pi(t)` and weighting its term by
:math:`1 / \pi(t)` gives an unbiased estimate of the sum:

.. math::

    \sum_{t=2}^T L_t = \mathbb{E}_{t \sim \pi}\left[\frac{L_t}{\pi(t)}\right].

:class:`subsample_timesteps` is the Pyro effect handler that switches
:class:`~pyro_diffusion.model.DiffusionModel` into this one-step form and
carries the drawn steps from the guide to the model.

References

[1] A. Nichol, P. Dhariwal, "Improved Denoising Diffusion Probabilistic
    Models", 2021, Section 3.3.
"""

import math

import torch

from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import _PYRO_STACK

__all__ = [
    "ImportanceTimesteps",
    "UniformTimesteps",
    "active_timestep_subsample",
    "subsample_timesteps",
]


class UniformTimesteps:
    r"""Draw ``t`` uniformly from ``2..T``, so :math:`1 / \pi(t) = T - 1`."""

    def probabilities(self, num_steps):
        """
        :returns: :math:`\\pi(t)` for ``t = 2..T``, shape ``[T - 1]``, float64.
        """
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
            raise ValueError(
                f"time steps are drawn from 2..T, which needs an integer T >= 2, got {num_steps!r}"
            )
        return torch.full((num_steps - 1,), 1.0 / (num_steps - 1), dtype=torch.float64)

    def draw(self, batch_size, num_steps, device=None, generator=None):
        """
        :param int batch_size: ``N``.
        :param int num_steps: ``T >= 2``.
        :returns: ``(t, weight)``, both of shape ``[N]``: steps in ``2..T`` and
            :math:`1 / \\pi(t)` as float32.
        """
        probs = self.probabilities(num_steps)
        index = torch.multinomial(probs.float(), batch_size, replacement=True, generator=generator)
        weight = (1.0 / probs[index]).float()
        return (index + 2).to(device), weight.to(device)

    def update(self, t, terms):
        """Record the terms observed at steps ``t``; uniform sampling ignores them."""

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class ImportanceTimesteps(UniformTimesteps):
    r"""
    Draw ``t`` with probability proportional to the root mean square of its
    recent terms, :math:`\pi(t) \propto \sqrt{\mathbb{E}[L_t^2]}`, mixed with
    a uniform share, Section 3.3 of [1]. Until every step has ``history``
    recorded terms it draws uniformly.

    :param int history: the number of recent terms kept per step.
    :param float uniform_fraction: the uniform share of the mixture, in
        ``(0, 1]``; it bounds every weight :math:`1 / \pi(t)` by
        ``(T - 1) / uniform_fraction``.
    """

    def __init__(self, history=10, uniform_fraction=0.1):
        if int(history) < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        if not 0 < uniform_fraction <= 1:
            raise ValueError(f"uniform_fraction must be in (0, 1], got {uniform_fraction}")
        self.history = int(history)
        self.uniform_fraction = float(uniform_fraction)
        self._terms = None
        self._counts = None

    def _reset(self, num_steps):
        self._terms = torch.zeros(num_steps - 1, self.history, dtype=torch.float64)
        self._counts = torch.zeros(num_steps - 1, dtype=torch.long)

    def probabilities(self, num_steps):
        uniform = super().probabilities(num_steps)
        if self._terms is None or len(self._counts) != num_steps - 1:
            self._reset(num_steps)
        if (self._counts < self.history).any():
            return uniform
        rms = self._terms.pow(2).mean(-1).sqrt()
        learned = rms / rms.sum()
        return (1 - self.uniform_fraction) * learned + self.uniform_fraction * uniform

    def update(self, t, terms):
        """
        Record per-example terms.

        :param torch.Tensor t: steps in ``2..T``, shape ``[N]``.
        :param torch.Tensor terms: the unweighted term of each example, shape ``[N]``.
        """
        if self._terms is None:
            return
        index = (t.detach().cpu().long() - 2).tolist()
        values = terms.detach().cpu().double().tolist()
        for i, value in zip(index, values):
            # A non-finite term would poison the proposal; the loss reports it.
            if not math.isfinite(value):
                continue
            slot = int(self._counts[i]) % self.history
            self._terms[i, slot] = value
            self._counts[i] += 1

    def state_dict(self):
        return {"terms": self._terms, "counts": self._counts}

    def load_state_dict(self, state):
        self._terms = state["terms"]
        self._counts = state["counts"]


class subsample_timesteps(Messenger):
    """
    An effect handler under which
    :class:`~pyro_diffusion.model.DiffusionModel` runs its one-step training
    program: the guide draws one time step per example, stores it here, and
    the model replayed against that guide reads the same steps.

    :param sampler: a :class:`UniformTimesteps` or :class:`ImportanceTimesteps`.
    :param torch.Generator generator: an optional random stream for the steps.
    """

    def __init__(self, sampler=None, generator=None):
        super().__init__()
        self.sampler = sampler if sampler is not None else UniformTimesteps()
        self.generator = generator
        self.t = None
        self.weight = None
        self._states = None

    def draw(self, batch_size, num_steps, device):
        """Draw and store new steps and weights, each of shape ``[N]``."""
        self.t, self.weight = self.sampler.draw(batch_size, num_steps, device, self.generator)
        self._states = None
        return self.t, self.weight

    def current(self, batch_size, num_steps, device):
        """Return the stored steps, drawing them if none match ``batch_size``."""
        if self.t is None or self.t.shape[0] != batch_size:
            return self.draw(batch_size, num_steps, device)
        return self.t, self.weight

    def record_states(self, x0, x_t, x_1):
        r"""
        Store the guide's draws :math:`x_t \sim q(x_t \mid x_0)` and
        :math:`x_1 \sim q(x_1 \mid x_0)` for the model replayed against it.

        :param torch.Tensor x0: the data they were drawn for, ``[N] + event_shape``.
        :param torch.Tensor x_t: shape ``[N] + event_shape``, at the stored steps.
        :param torch.Tensor x_1: shape ``[N] + event_shape``.
        """
        self._states = (x0, self.t, x_t, x_1)

    def states(self, x0):
        """
        :returns: ``(x_t, x_1)`` recorded for this very ``x0`` and the stored
            steps, or ``None`` when the guide has not drawn them.
        """
        if self._states is None:
            return None
        data, t, x_t, x_1 = self._states
        if data is not x0 or t is not self.t:
            return None
        return x_t, x_1


def active_timestep_subsample():
    """
    :returns: the innermost active :class:`subsample_timesteps`, or ``None``.
    """
    for frame in reversed(_PYRO_STACK):
        if isinstance(frame, subsample_timesteps):
            return frame
    return None
