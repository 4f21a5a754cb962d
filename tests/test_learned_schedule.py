import math

import pyro
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from pyro_diffusion.elbo import TimestepELBO
from pyro_diffusion.exact import LinearGaussianReverse, closed_form_bound
from pyro_diffusion.forward import GaussianForward
from pyro_diffusion.likelihood import heldout_bound
from pyro_diffusion.model import DiffusionModel
from pyro_diffusion.nets import MLP
from pyro_diffusion.reverse import PaperReverse
from pyro_diffusion.schedules import (
    TABLE_NAMES,
    BetaSchedule,
    LearnedBetaSchedule,
    make_betas,
    paper_betas,
)


@settings(max_examples=20, deadline=None)
@given(
    kind=st.sampled_from(["paper", "linear", "cosine", "log-snr"]),
    num_steps=st.integers(1, 60),
)
def test_tables_match_fixed_schedule(kind, num_steps):
    betas = make_betas(kind, num_steps)
    fixed = BetaSchedule(betas)
    learned = LearnedBetaSchedule(betas)
    for name in TABLE_NAMES:
        expected = getattr(fixed, name)
        actual = getattr(learned, name)
        assert actual.dtype == torch.float64
        assert torch.allclose(actual, expected, rtol=1e-10, atol=1e-14), name


def test_betas_bounded_beta_1_fixed():
    learned = LearnedBetaSchedule(paper_betas(6, beta_1=0.02))
    with torch.no_grad():
        learned.unconstrained_betas.copy_(torch.tensor([-80.0, -3.0, 0.0, 3.0, 80.0]))
    betas = learned.current_betas()
    assert betas[0].item() == 0.02
    assert ((betas > 0) & (betas < 1)).all()
    for name in TABLE_NAMES:
        assert torch.isfinite(getattr(learned, name)).all(), name
    names = [name for name, _ in learned.named_parameters()]
    assert names == ["unconstrained_betas"]


def test_table_gradients_are_finite():
    learned = LearnedBetaSchedule(paper_betas(8))
    total = sum(getattr(learned, name)[1:].sum() for name in TABLE_NAMES)
    total.backward()
    gradient = learned.unconstrained_betas.grad
    assert torch.isfinite(gradient).all()
    assert (gradient != 0).all()


def test_frozen_copy_is_fixed():
    learned = LearnedBetaSchedule(paper_betas(5))
    frozen = learned.frozen()
    assert isinstance(frozen, BetaSchedule)
    assert torch.equal(frozen.betas, learned.betas.detach())
    assert not any(True for _ in frozen.parameters())


def _linear_model(num_steps=4):
    torch.manual_seed(0)
    schedule = LearnedBetaSchedule(paper_betas(num_steps, beta_1=0.05))
    forward = GaussianForward(schedule, event_dim=1)
    steps = torch.arange(1, num_steps + 1, dtype=torch.float64)
    reverse = LinearGaussianReverse(
        forward,
        loc_coef=0.9 + 0.02 * steps,
        loc_offset=0.1 * steps,
        log_variance=-1.0 + 0.2 * steps,
        event_shape=(1,),
    )
    return DiffusionModel(forward, reverse)


def _closed_form_gradient(model, x0):
    parameter = model.forward_process.schedule.unconstrained_betas
    parameter.grad = None
    reverse = model.reverse
    bound = closed_form_bound(
        model.forward_process, reverse.loc_coef, reverse.loc_offset, reverse.log_variance, x0
    ).sum()
    (gradient,) = torch.autograd.grad(bound, parameter)
    return gradient


def _sampled_gradient(model, elbo, x0, num_copies=4000, num_chunks=20):
    """
    Average the gradient of the ELBO summed over ``x0`` across
    ``num_chunks`` batches of ``num_copies`` repeats of ``x0``.

    :returns: ``(mean, stderr)`` of the gradient, each of shape ``[T - 1]``.
    """
    parameter = model.forward_process.schedule.unconstrained_betas
    draws = []
    for _ in range(num_chunks):
        repeated = x0.repeat(num_copies, 1)
        loss = elbo.differentiable_loss(model.model, model.guide, repeated) / num_copies
        (gradient,) = torch.autograd.grad(-loss, parameter)
        draws.append(gradient)
    draws = torch.stack(draws)
    return draws.mean(0), draws.std(0) / math.sqrt(num_chunks)


@pytest.mark.parametrize("elbo", [Trace_ELBO(), TimestepELBO()], ids=["trace", "timestep"])
def test_schedule_gradient_matches_closed_form(elbo):
    # The guide's samples are reparameterized, so the gradient of either
    # estimator with respect to the learned betas is unbiased for the
    # gradient of the exact bound.
    pyro.clear_param_store()
    model = _linear_model()
    x0 = torch.tensor([[0.5], [1.5], [-0.3]])
    torch.manual_seed(1)

    mean, stderr = _sampled_gradient(model, elbo, x0)

    expected = _closed_form_gradient(model, x0).float()
    assert (expected.abs() > 0.05).all()
    assert ((mean - expected).abs() < 5 * stderr + 1e-3).all(), (mean, expected, stderr)


def test_guide_registers_schedule_parameters():
    pyro.clear_param_store()
    model = _linear_model()
    x0 = torch.zeros(2, 1)
    trace = pyro.poutine.trace(model.guide, param_only=True).get_trace(x0)
    parameters = [site["value"].unconstrained() for site in trace.nodes.values()]
    schedule_parameter = model.forward_process.schedule.unconstrained_betas
    assert any(value is schedule_parameter for value in parameters)


def _fit(learned, num_steps=4, svi_steps=300):
    pyro.clear_param_store()
    torch.manual_seed(0)
    betas = paper_betas(num_steps, beta_1=0.05)
    schedule = LearnedBetaSchedule(betas) if learned else BetaSchedule(betas)
    forward = GaussianForward(schedule, event_dim=1)
    net = MLP(1, 2, num_steps, hidden_dim=32, num_blocks=1, time_conditioning="bumps")
    model = DiffusionModel(forward, PaperReverse(forward, net, (1,)))
    svi = SVI(model.model, model.guide, Adam({"lr": 1e-2}), Trace_ELBO())
    data = torch.Generator().manual_seed(1)
    for _ in range(svi_steps):
        svi.step(1.5 + 0.3 * torch.randn(256, 1, generator=data))
    heldout = 1.5 + 0.3 * torch.randn(4000, 1, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        result = heldout_bound(model, heldout, generator=torch.Generator().manual_seed(3))
    return result, betas, schedule


def test_svi_learns_betas_improves_bound():
    # After 4 steps of the paper's schedule, alpha_bar_T = 0.24, so x_T of
    # data N(1.5, 0.3^2) has mean 0.73, far from the prior N(0, 1). A learned
    # schedule can remove more of the signal.
    fixed, _, _ = _fit(learned=False)
    learned, initial, schedule = _fit(learned=True)

    final = schedule.current_betas().detach()
    assert final[0] == initial[0]
    assert (final[1:] - initial[1:]).abs().max() > 0.05
    assert ((final > 0) & (final < 1)).all()
    improvement = learned["elbo_bits"] - fixed["elbo_bits"]
    noise = math.hypot(learned["elbo_bits_stderr"], fixed["elbo_bits_stderr"])
    assert improvement > 0.15
    assert improvement > 4 * noise


def test_cached_tables_follow_parameter_updates():
    learned = LearnedBetaSchedule(paper_betas(6))
    other = LearnedBetaSchedule(make_betas("cosine", 6))
    with torch.no_grad():
        before = learned.alphas_bar.clone()
        learned.load_state_dict(other.state_dict())
        after = learned.alphas_bar

    assert not torch.equal(before, after)
    torch.testing.assert_close(after, other.alphas_bar.detach())
