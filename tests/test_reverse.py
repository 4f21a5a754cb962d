import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyro_diffusion.forward import GaussianForward
from pyro_diffusion.nets import MLP
from pyro_diffusion.reverse import EpsilonReverse, PaperReverse
from pyro_diffusion.schedules import BetaSchedule

NUM_STEPS = 20
DATA_DIM = 3


def _random_mlp(out_dim, seed=1, scale=3.0):
    """Build an MLP and replace its zero-initialized readout with random weights of std ``scale``."""
    torch.manual_seed(seed)
    net = MLP(DATA_DIM, out_dim, NUM_STEPS, hidden_dim=16, num_blocks=1)
    torch.nn.init.normal_(net.output.weight, std=scale)
    torch.nn.init.normal_(net.output.bias, std=scale)
    return net


def _zero_mlp(out_dim):
    return MLP(DATA_DIM, out_dim, NUM_STEPS, hidden_dim=16, num_blocks=1)


@pytest.fixture(scope="module", params=["paper", "linear", "cosine"])
def forward(request):
    return GaussianForward(BetaSchedule.from_name(request.param, NUM_STEPS))


@settings(max_examples=25, deadline=None)
@given(t=st.integers(min_value=1, max_value=NUM_STEPS), seed=st.integers(0, 2**16))
def test_learned_variance_between_bounds(forward, t, seed):
    kernel = EpsilonReverse(forward, _random_mlp(2 * DATA_DIM, seed), (DATA_DIM,), "learned")
    x_t = 3 * torch.randn(64, DATA_DIM, generator=torch.Generator().manual_seed(seed))

    with torch.no_grad():
        _, log_variance = kernel.loc_log_variance(x_t, torch.tensor(t))

    schedule = forward.schedule
    lower = schedule.log_posterior_variance_clipped[t].float()
    upper = schedule.log_betas[t].float()
    assert torch.isfinite(log_variance).all()
    assert (log_variance >= lower - 1e-6).all()
    assert (log_variance <= upper + 1e-6).all()


def test_learned_variance_varies_with_network(forward):
    kernel = EpsilonReverse(forward, _random_mlp(2 * DATA_DIM, scale=0.5), (DATA_DIM,), "learned")
    x_t = torch.randn(64, DATA_DIM)

    with torch.no_grad():
        _, log_variance = kernel.loc_log_variance(x_t, torch.tensor(5))

    assert log_variance.std() > 0


def test_lower_bound_clipped_at_first_step(forward):
    schedule = forward.schedule

    assert schedule.log_posterior_variance_clipped[1] == schedule.posterior_variance[2].log()


@pytest.mark.parametrize("variance, name", [("small", "log_posterior_variance_clipped"), ("large", "log_betas")])
def test_fixed_variance_is_bound(forward, variance, name):
    kernel = EpsilonReverse(forward, _random_mlp(DATA_DIM), (DATA_DIM,), variance)
    x_t = torch.randn(4, DATA_DIM)
    t = torch.tensor([1, 2, 9, NUM_STEPS])

    with torch.no_grad():
        _, log_variance = kernel.loc_log_variance(x_t, t)

    expected = getattr(forward.schedule, name)[t].float().unsqueeze(-1).expand(4, DATA_DIM)
    torch.testing.assert_close(log_variance.expand(4, DATA_DIM), expected)


def test_epsilon_mean_from_noise(forward):
    kernel = EpsilonReverse(forward, _random_mlp(2 * DATA_DIM, scale=0.5), (DATA_DIM,), "learned")
    x_t = torch.randn(5, DATA_DIM)
    t = torch.tensor([1, 3, 7, 11, NUM_STEPS])

    with torch.no_grad():
        loc, _ = kernel.loc_log_variance(x_t, t)
        eps = kernel.network_outputs(x_t, t)[0]

    s = forward.schedule
    betas = s.betas[t].float().unsqueeze(-1)
    expected = (x_t - betas / s.sqrt_one_minus_alphas_bar[t].float().unsqueeze(-1) * eps) / (
        1 - betas
    ).sqrt()
    torch.testing.assert_close(loc, expected, rtol=1e-5, atol=1e-5)


def test_epsilon_mean_exact_for_true_noise(forward):
    # With the true noise the predicted x0 is exact, and the mean equals the
    # forward posterior mean given that x0.
    x0 = torch.randn(6, DATA_DIM, dtype=torch.float64)
    noise = torch.randn(6, DATA_DIM, dtype=torch.float64)
    t = torch.tensor([1, 2, 4, 8, 16, NUM_STEPS])
    x_t = forward.q_sample(x0, t, noise)

    class TrueNoise(torch.nn.Module):
        def forward(self, x, steps):
            return noise

    kernel = EpsilonReverse(forward, TrueNoise(), (DATA_DIM,), "small")
    loc, _ = kernel.loc_log_variance(x_t, t)

    expected, _ = forward.posterior_mean_variance(x_t, x0, t)
    torch.testing.assert_close(kernel.predict_x0(x_t, t), x0)
    torch.testing.assert_close(loc, expected)


def test_paper_zero_network_is_forward_variance(forward):
    kernel = PaperReverse(forward, _zero_mlp(2 * DATA_DIM), (DATA_DIM,))
    x_t = torch.randn(4, DATA_DIM, dtype=torch.float64)
    t = torch.tensor([1, 2, 10, NUM_STEPS])

    with torch.no_grad():
        loc, log_variance = kernel.loc_log_variance(x_t.float(), t)

    betas = forward.schedule.betas[t].unsqueeze(-1)
    torch.testing.assert_close(log_variance.exp().double().expand(4, DATA_DIM), betas.expand(4, DATA_DIM), rtol=1e-5, atol=0.0)
    torch.testing.assert_close(loc.double(), x_t * (1 - betas), rtol=1e-5, atol=1e-6)


def test_paper_variance_in_unit_interval(forward):
    kernel = PaperReverse(forward, _random_mlp(2 * DATA_DIM), (DATA_DIM,))
    x_t = 3 * torch.randn(64, DATA_DIM)

    with torch.no_grad():
        _, log_variance = kernel.loc_log_variance(x_t, torch.tensor(NUM_STEPS))

    assert torch.isfinite(log_variance).all()
    assert (log_variance <= 0).all()


def test_unknown_variance_lists_allowed(forward):
    with pytest.raises(ValueError, match="'medium'") as info:
        EpsilonReverse(forward, _zero_mlp(DATA_DIM), (DATA_DIM,), "medium")

    for allowed in ["small", "large", "learned"]:
        assert allowed in str(info.value)


def test_distribution_event_shape(forward):
    kernel = EpsilonReverse(forward, _random_mlp(2 * DATA_DIM), (DATA_DIM,), "learned")
    x_t = torch.randn(2, 5, DATA_DIM)

    with torch.no_grad():
        distribution = kernel.distribution(x_t, torch.tensor(3))

    assert distribution.batch_shape == (2, 5)
    assert distribution.event_shape == (DATA_DIM,)


def test_step_out_of_range_raises(forward):
    kernel = EpsilonReverse(forward, _zero_mlp(2 * DATA_DIM), (DATA_DIM,), "learned")

    with pytest.raises(ValueError, match=f"t = {NUM_STEPS + 1}"):
        kernel.loc_log_variance(torch.zeros(1, DATA_DIM), torch.tensor(NUM_STEPS + 1))
