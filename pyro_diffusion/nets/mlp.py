r"""
A residual multilayer perceptron for vector data, conditioned on the time
step either through a sinusoidal embedding or through the Gaussian bump
readout of Sohl-Dickstein et al. (2015), Appendix D.
"""

import enum

import torch
from torch import nn

from ..options import parse_option
from .checks import time_steps
from .temporal import GaussianBumps, SinusoidalEmbedding

__all__ = ["MLP", "TimeConditioning"]


class TimeConditioning(str, enum.Enum):
    """The ways a network can receive the time step."""

    #: A sinusoidal embedding of ``t`` added inside every residual block.
    EMBEDDING = "embedding"
    #: A time-free body read out through normalized Gaussian bumps of ``t``.
    BUMPS = "bumps"

    @classmethod
    def parse(cls, value):
        return parse_option(cls, value, "time conditioning")


class _Block(nn.Module):
    def __init__(self, hidden_dim, time_dim, dropout):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden_dim)
        self.inner = nn.Linear(hidden_dim, hidden_dim)
        self.outer = nn.Linear(hidden_dim, hidden_dim)
        self.time = nn.Linear(time_dim, hidden_dim) if time_dim else None
        self.activation = nn.SiLU()

    def forward(self, h, time_features):
        z = self.inner(self.activation(self.norm(h)))
        if self.time is not None:
            z = z + self.time(time_features)
        return h + self.outer(self.dropout(self.activation(z)))


class MLP(nn.Module):
    r"""
    A residual MLP :math:`f(x_t, t)` for data of shape ``[N, D]``.

    :param int data_dim: ``D``.
    :param int out_dim: the number of outputs per example.
    :param int num_steps: ``T``, the range of ``t``.
    :param int hidden_dim: the width of every hidden layer.
    :param int num_blocks: the number of residual blocks.
    :param time_conditioning: ``"embedding"`` or ``"bumps"``; see
        :class:`TimeConditioning`.
    :param int num_bumps: the number of bump functions for ``"bumps"``.
    :param float dropout: the dropout probability inside each residual
        block, active in training mode only.
    """

    def __init__(
        self,
        data_dim,
        out_dim,
        num_steps,
        hidden_dim=256,
        num_blocks=3,
        time_conditioning="embedding",
        num_bumps=10,
        dropout=0.0,
    ):
        super().__init__()
        for name, value in [("data_dim", data_dim), ("out_dim", out_dim), ("hidden_dim", hidden_dim)]:
            if int(value) < 1:
                raise ValueError(f"MLP needs {name} >= 1, got {value}")
        self.time_conditioning = TimeConditioning.parse(time_conditioning)
        self.data_dim = int(data_dim)
        self.num_steps = int(num_steps)
        self.out_dim = int(out_dim)
        self.input = nn.Linear(data_dim, hidden_dim)
        time_dim = 0
        if self.time_conditioning is TimeConditioning.EMBEDDING:
            time_dim = hidden_dim
            self.time_embedding = nn.Sequential(
                SinusoidalEmbedding(num_steps, 64),
                nn.Linear(64, hidden_dim),
                nn.SiLU(),
                nn.Linear(hidden_dim, hidden_dim),
            )
            readout_dim = out_dim
        else:
            self.bumps = GaussianBumps(num_steps, num_bumps)
            readout_dim = out_dim * self.bumps.num_bumps
        self.blocks = nn.ModuleList(_Block(hidden_dim, time_dim, dropout) for _ in range(num_blocks))
        self.output_norm = nn.LayerNorm(hidden_dim)
        self.output = nn.Linear(hidden_dim, readout_dim)
        # A zero readout starts the reverse kernel at its reference value
        # (zero predicted noise, or the forward kernel's own variance).
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(self, x, t):
        """
        :param torch.Tensor x: :math:`x_t`, shape ``[N, D]``.
        :param torch.Tensor t: time steps, shape ``[N]``.
        :returns: shape ``[N, out_dim]``.
        """
        if x.shape[-1] != self.data_dim:
            raise ValueError(
                f"MLP was built for {self.data_dim} features but got input of shape "
                f"{tuple(x.shape)}"
            )
        t = time_steps("MLP", t, self.num_steps, x).expand(x.shape[:-1])
        time_features = None
        if self.time_conditioning is TimeConditioning.EMBEDDING:
            time_features = self.time_embedding(t)
        h = self.input(x)
        for block in self.blocks:
            h = block(h, time_features)
        out = self.output(torch.nn.functional.silu(self.output_norm(h)))
        if self.time_conditioning is TimeConditioning.BUMPS:
            weights = self.bumps(t)
            out = out.reshape(out.shape[:-1] + (self.bumps.num_bumps, self.out_dim))
            out = (weights.unsqueeze(-1) * out).sum(-2)
        return out
