"""
One PyTorch optimizer over every parameter SVI updates.

:class:`pyro.optim.PyroOptim` builds one PyTorch optimizer per parameter
tensor, so a network of ``P`` tensors pays ``P`` optimizer calls per step.
:class:`JointOptim` keeps a single optimizer whose one parameter group grows
as SVI meets new parameters, so PyTorch's multi-tensor (``foreach``) update
runs once for all of them. The update of each tensor is the same as under
``PyroOptim`` with the same constructor and arguments.
"""

import logging

import torch

import pyro
from pyro.optim import PyroOptim

logger = logging.getLogger(__name__)

__all__ = ["JointOptim", "joint_adam", "joint_clipped_adam"]


class JointOptim(PyroOptim):
    """
    A :class:`pyro.optim.PyroOptim` that drives all parameters with one
    PyTorch optimizer, for use with stock :class:`pyro.infer.SVI`::

        svi = SVI(model, guide, JointOptim(torch.optim.Adam, {"lr": 1e-3}), loss)

    As with ``PyroOptim``, a step updates only the parameters of the current
    traces; the others keep their values and optimizer state. The state of
    :meth:`get_state` has ``PyroOptim``'s layout (one optimizer state dict per
    parameter name), so saved states move between the two classes.

    The one parameter group shares its hyperparameters. ``PyroOptim`` keeps
    a group per tensor, which changes only on the steps its tensor takes part
    in. So an update that changes the hyperparameters on every step, such as
    the learning-rate decay ``lrd`` of Pyro's clipped Adam, matches
    ``PyroOptim`` only when every parameter takes part in every step from the
    first, as in a diffusion model's training. Loading a state whose tensors have different learning
    rates keeps the rate of the last one loaded.

    :param optim_constructor: a :class:`torch.optim.Optimizer` class.
    :param dict optim_args: its keyword arguments, shared by all parameters.
    """

    def __init__(self, optim_constructor, optim_args):
        if callable(optim_args) or not isinstance(optim_args, dict):
            raise ValueError(
                f"JointOptim takes one dict of optimizer arguments for all parameters, got "
                f"{type(optim_args).__name__}: for per-parameter arguments use pyro.optim.PyroOptim"
            )
        if not (isinstance(optim_constructor, type) and issubclass(optim_constructor, torch.optim.Optimizer)):
            raise ValueError(
                f"optim_constructor must be a torch.optim.Optimizer class such as torch.optim.Adam, "
                f"got {optim_constructor!r}"
            )
        super().__init__(optim_constructor, dict(optim_args))
        self.optimizer = None
        self._known = set()

    def __call__(self, params, *args, **kwargs):
        """
        Take one optimizer step for ``params``, adding the ones not seen
        before to the optimizer.

        :param params: the parameter tensors of the current traces.
        """
        params = list(params)
        new = [p for p in params if p not in self._known]
        if new:
            self._add(new)
        group = self.optimizer.param_groups[0]
        if len(params) != len(group["params"]):
            # A tensor outside the current traces keeps its values: PyTorch's
            # optimizers skip tensors without a gradient.
            current = set(params)
            for p in group["params"]:
                if p not in current:
                    p.grad = None
        self.optimizer.step(*args, **kwargs)

    def _add(self, params):
        if self.optimizer is None:
            self.optimizer = self.pt_optim_constructor(params, **self.pt_optim_args)
        else:
            if self.optimizer.param_groups[0].get("lrd", 1.0) != 1.0:
                logger.warning(
                    "JointOptim: %d parameter(s) joined after the first step; they start at the decayed learning "
                    "rate that all parameters share (pyro.optim.PyroOptim would start them at the initial one)",
                    len(params),
                )
            self.optimizer.param_groups[0]["params"].extend(params)
        self._known.update(params)
        store = pyro.get_param_store()
        group = self.optimizer.param_groups[0]
        for p in params:
            saved = self._state_waiting_to_be_consumed.pop(store.param_name(p), None)
            if saved is None:
                continue
            saved_group = saved["param_groups"][0]
            for key, value in saved_group.items():
                if key != "params":
                    group[key] = value
            state = saved["state"].get(saved_group["params"][0])
            if state is not None:
                self.optimizer.state[p] = {
                    key: value.to(device=p.device) if torch.is_tensor(value) and value.dim() > 0 else value
                    for key, value in state.items()
                }

    def get_state(self):
        """
        :returns: ``{parameter name: optimizer state dict}``, as
            :meth:`pyro.optim.PyroOptim.get_state` gives, plus any loaded
            state of parameters not met yet.
        """
        state = dict(self._state_waiting_to_be_consumed)
        if self.optimizer is None:
            return state
        store = pyro.get_param_store()
        group = self.optimizer.param_groups[0]
        hyperparameters = {key: value for key, value in group.items() if key != "params"}
        for p in group["params"]:
            entry = {"param_groups": [dict(hyperparameters, params=[0])], "state": {}}
            if p in self.optimizer.state and self.optimizer.state[p]:
                entry["state"][0] = dict(self.optimizer.state[p])
            state[store.param_name(p)] = entry
        return state


def joint_adam(optim_args):
    """
    :param dict optim_args: arguments of :class:`torch.optim.Adam`, e.g. ``{"lr": 1e-3}``.
    :returns: a :class:`JointOptim` of :class:`torch.optim.Adam`.
    """
    return JointOptim(torch.optim.Adam, optim_args)


def joint_clipped_adam(optim_args):
    """
    :param dict optim_args: arguments of Pyro's clipped Adam (``lr``,
        ``betas``, ``eps``, ``weight_decay``, ``clip_norm``, ``lrd``).
    :returns: a :class:`JointOptim` of :class:`pyro.optim.clipped_adam.ClippedAdam`,
        the update of :class:`pyro.optim.ClippedAdam`.
    """
    from pyro.optim.clipped_adam import ClippedAdam

    return JointOptim(ClippedAdam, optim_args)
