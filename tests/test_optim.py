"""JointOptim: one PyTorch optimizer for all parameters, with PyroOptim's updates and state layout."""

import pytest
import torch

import pyro
import pyro.distributions as dist
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam, ClippedAdam

from pyro_diffusion import (
    MLP, BetaSchedule, DiffusionModel, EpsilonReverse, GaussianForward, JointOptim, TimestepELBO, joint_adam,
    joint_clipped_adam,
)


def _fit(make_optimizer, steps=15, restore=None):
    """Train a small diffusion model and return its losses, parameters and optimizer."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    forward = GaussianForward(BetaSchedule.from_name("linear", 20), event_dim=1)
    net = MLP(3, 6, 20, hidden_dim=16, num_blocks=1)
    diffusion = DiffusionModel(forward, EpsilonReverse(forward, net, (3,), variance="learned"), name="optim_test")
    optimizer = make_optimizer()
    if restore is not None:
        optimizer.set_state(restore)
    svi = SVI(diffusion.model, diffusion.guide, optimizer, TimestepELBO())
    data = torch.randn(16, 3)
    losses = [svi.step(data) for _ in range(steps)]
    return losses, [p.detach().clone() for p in diffusion.parameters()], optimizer


ADAM_ARGS = {"lr": 0.02}
CLIPPED_ARGS = {"lr": 0.02, "lrd": 0.97, "clip_norm": 0.5}


@pytest.mark.parametrize(
    "stock, joint",
    [(lambda: Adam(ADAM_ARGS), lambda: joint_adam(ADAM_ARGS)),
     (lambda: ClippedAdam(CLIPPED_ARGS), lambda: joint_clipped_adam(CLIPPED_ARGS))],
    ids=["adam", "clipped_adam"],
)
def test_joint_optimizer_matches_pyro_optim_bit_for_bit(stock, joint):
    stock_losses, stock_params, _ = _fit(stock)
    joint_losses, joint_params, _ = _fit(joint)
    assert stock_losses == joint_losses
    for a, b in zip(stock_params, joint_params):
        assert torch.equal(a, b)


def _alternating_model(step):
    a = pyro.param("a", torch.tensor([1.0, -1.0]))
    loc = a.sum()
    if step % 2:
        loc = loc + pyro.param("b", torch.tensor(0.5))
    pyro.sample("y", dist.Normal(loc, 1.0), obs=torch.tensor(3.0))


def _alternating_fit(optimizer, steps=6):
    pyro.clear_param_store()
    svi = SVI(_alternating_model, lambda step: None, optimizer, Trace_ELBO())
    values = []
    for step in range(steps):
        svi.step(step)
        values.append({name: value.detach().clone() for name, value in pyro.get_param_store().items()})
    return values


def test_parameters_outside_the_trace_keep_values_and_state():
    # "b" is in every other trace only: it must not move on the other steps,
    # as under PyroOptim (zeroed gradients would still move it through Adam's momentum).
    stock = _alternating_fit(Adam({"lr": 0.1}))
    joint = _alternating_fit(joint_adam({"lr": 0.1}))
    for stock_values, joint_values in zip(stock, joint):
        assert stock_values.keys() == joint_values.keys()
        for name in stock_values:
            assert torch.equal(stock_values[name], joint_values[name]), name
    assert torch.equal(joint[2]["b"], joint[1]["b"])
    assert not torch.equal(joint[3]["b"], joint[2]["b"])


@pytest.mark.parametrize("first, second", [("joint", "stock"), ("stock", "joint"), ("joint", "joint")])
def test_state_moves_between_joint_and_pyro_optim(first, second):
    factories = {"joint": lambda: joint_clipped_adam(CLIPPED_ARGS), "stock": lambda: ClippedAdam(CLIPPED_ARGS)}
    # The moments, step counts and decayed learning rate carry over; the
    # reference saves and loads with the stock optimizer on both sides.
    state = _fit(factories[first], steps=5)[2].get_state()
    reference_state = _fit(factories["stock"], steps=5)[2].get_state()
    assert state.keys() == reference_state.keys()
    _, resumed, _ = _fit(factories[second], steps=5, restore=state)
    _, reference, _ = _fit(factories["stock"], steps=5, restore=reference_state)
    _, unrestored, _ = _fit(factories["stock"], steps=5)
    for a, b in zip(resumed, reference):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(reference, unrestored))


def test_get_state_before_first_step():
    _, _, optimizer = _fit(lambda: joint_adam(ADAM_ARGS), steps=2)
    state = optimizer.get_state()
    fresh = joint_adam(ADAM_ARGS)
    fresh.set_state(state)
    assert fresh.get_state().keys() == state.keys()


def test_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match="one dict of optimizer arguments"):
        JointOptim(torch.optim.Adam, lambda name: {"lr": 0.1})
    with pytest.raises(ValueError, match="torch.optim.Optimizer class"):
        JointOptim(Adam, {"lr": 0.1})


def test_late_parameter_with_decay_is_logged(caplog):
    def model(step):
        loc = pyro.param("a", torch.tensor(0.0))
        if step > 0:
            loc = loc + pyro.param("late", torch.tensor(0.0))
        pyro.sample("y", dist.Normal(loc, 1.0), obs=torch.tensor(1.0))

    svi = SVI(model, lambda step: None, joint_clipped_adam({"lr": 0.1, "lrd": 0.9}), Trace_ELBO())
    with caplog.at_level("WARNING", logger="pyro_diffusion.optim"):
        svi.step(0)
        assert not caplog.records
        svi.step(1)
    assert "joined after the first step" in caplog.text
