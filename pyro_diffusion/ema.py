r"""
An exponential moving average of a module's parameters,
:math:`\bar\theta \leftarrow d\,\bar\theta + (1 - d)\,\theta` after every
optimizer step, as used for sampling and evaluation by Ho et al. (2020).
"""

import copy

import torch

__all__ = ["ExponentialMovingAverage"]


class ExponentialMovingAverage:
    """
    The moving average of the floating-point parameters and buffers of ``module``.

    :param torch.nn.Module module: the module whose parameters are averaged.
    :param float decay: :math:`d` in ``[0, 1)``. The effective decay at update
        ``n`` is ``min(d, (1 + n) / (10 + n))``, so early averages are not
        dominated by the initial weights.
    """

    def __init__(self, module, decay=0.999):
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module):
        """Move the average towards the current parameters of ``module``."""
        self.num_updates += 1
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for name, value in module.state_dict().items():
            shadow = self.shadow[name]
            if value.is_floating_point():
                shadow.mul_(decay).add_(value.detach(), alpha=1 - decay)
            else:
                shadow.copy_(value)

    def averaged(self, module):
        """:returns: a copy of ``module`` holding the averaged parameters."""
        clone = copy.deepcopy(module)
        clone.load_state_dict(self.shadow)
        return clone

    def state_dict(self):
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state):
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}
