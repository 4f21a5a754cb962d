r"""
The binary heartbeat of Sohl-Dickstein et al. (2015): sequences of length
20 with a 1 in every fifth bin and a uniformly random phase, so there are
exactly 5 equally likely sequences and the true log-likelihood of every
sequence is :math:`-\log_2 5 \approx -2.322` bits.
"""

import math

import torch

__all__ = ["HEARTBEAT_LENGTH", "HEARTBEAT_PERIOD", "HEARTBEAT_LOG_LIKELIHOOD_BITS", "sample_heartbeat"]

HEARTBEAT_LENGTH = 20
HEARTBEAT_PERIOD = 5

#: The exact log-likelihood of every heartbeat sequence, in bits.
HEARTBEAT_LOG_LIKELIHOOD_BITS = -math.log2(HEARTBEAT_PERIOD)


def sample_heartbeat(num_samples, generator=None):
    """
    Draw heartbeat sequences: ``x[i] = 1`` where ``(i - phase) % 5 == 0``,
    with ``phase`` uniform on ``0..4``.

    :param int num_samples: ``N >= 1``.
    :param torch.Generator generator: an optional random stream.
    :returns: float32 tensor of 0s and 1s, shape ``[N, 20]``.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    phase = torch.randint(0, HEARTBEAT_PERIOD, (num_samples, 1), generator=generator)
    position = torch.arange(HEARTBEAT_LENGTH)
    return ((position - phase) % HEARTBEAT_PERIOD == 0).float()
