import itertools
import math

import pyro
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from pyro.poutine.util import site_is_subsample

from pyro_diffusion.binomial import BernoulliReverse, BinomialForward, binomial_betas
from pyro_diffusion.elbo import TimestepELBO
from pyro_diffusion.likelihood import bound_terms
from pyro_diffusion.model import DiffusionModel
from pyro_diffusion.nets import MLP


def binomial_model(num_steps, dim, seed=0, width=16, prediction="flip"):
    torch.manual_seed(seed)
    forward = BinomialForward(num_steps=num_steps)
    net = MLP(dim, dim, num_steps, hidden_dim=width, num_blocks=1)
    # Random readout weights, so the kernel differs from the forward process.
    torch.nn.init.normal_(net.output.weight, std=0.5)
    torch.nn.init.normal_(net.output.bias, std=0.5)
    return DiffusionModel(forward, BernoulliReverse(forward, net, (dim,), prediction=prediction))


def test_schedule_ends_at_one():
    betas = binomial_betas(5)

    torch.testing.assert_close(betas, torch.tensor([1 / 5, 1 / 4, 1 / 3, 1 / 2, 1.0], dtype=torch.float64))
    assert BinomialForward(betas).alphas_bar[-1] == 0


@settings(max_examples=40, deadline=None)
@given(num_steps=st.integers(1, 50), data=st.data(), x0=st.sampled_from([0.0, 1.0]))
def test_composed_steps_equal_marginal(num_steps, data, x0):
    forward = BinomialForward(num_steps=num_steps)
    t = data.draw(st.integers(1, num_steps))
    probability = torch.tensor([x0], dtype=torch.float64)

    for step in range(1, t + 1):
        beta = forward.betas[step]
        probability = probability * (1 - beta) + 0.5 * beta

    marginal = forward.marginal(torch.tensor([[x0]], dtype=torch.float64), torch.tensor([t]))
    torch.testing.assert_close(marginal.base_dist.probs.flatten(), probability)


@settings(max_examples=40, deadline=None)
@given(num_steps=st.integers(2, 30), data=st.data(), x0=st.sampled_from([0.0, 1.0]), x_t=st.sampled_from([0.0, 1.0]))
def test_posterior_equals_bayes_rule(num_steps, data, x0, x_t):
    forward = BinomialForward(num_steps=num_steps)
    t = data.draw(st.integers(2, num_steps))
    x0_tensor = torch.tensor([[x0]], dtype=torch.float64)
    x_t_tensor = torch.tensor([[x_t]], dtype=torch.float64)

    joint = []
    for previous in (0.0, 1.0):
        previous_tensor = torch.tensor([[previous]], dtype=torch.float64)
        prior = forward.marginal_probs(x0_tensor, torch.tensor([t - 1])) if t > 1 else x0_tensor
        prior = prior if previous == 1.0 else 1 - prior
        step = forward.step(previous_tensor, torch.tensor([t])).log_prob(x_t_tensor).exp()
        joint.append(float(prior) * float(step))
    expected = joint[1] / (joint[0] + joint[1])

    posterior = forward.posterior(x_t_tensor, x0_tensor, torch.tensor([t]))
    assert float(posterior.base_dist.probs) == pytest.approx(expected, rel=1e-9)


def test_site_names_and_binary_samples():
    diffusion = binomial_model(4, 3)
    trace = pyro.poutine.trace(diffusion.model).get_trace(num_samples=5)

    names = [
        name for name, site in trace.nodes.items() if site["type"] == "sample" and not site_is_subsample(site)
    ]
    assert names == ["x_4", "x_3", "x_2", "x_1", "x_0"]
    samples = diffusion.sample(200, generator=torch.Generator().manual_seed(0))
    assert set(samples.unique().tolist()) <= {0.0, 1.0}


def _trace_elbo_mean(diffusion, x0, particles):
    elbo = Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
    return -elbo.loss(diffusion.model, diffusion.guide, x0)


@pytest.mark.parametrize("prediction", ["flip", "x0"])
def test_timestep_elbo_mean_matches_trace_elbo(prediction):
    diffusion = binomial_model(5, 3, prediction=prediction)
    x0 = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])

    trace_draws = torch.tensor([_trace_elbo_mean(diffusion, x0, 1) for _ in range(3000)])
    timestep = TimestepELBO()
    timestep_draws = torch.tensor(
        [float(timestep.elbo_per_example(diffusion.model, diffusion.guide, x0).sum().detach()) for _ in range(3000)]
    )

    error = math.sqrt(trace_draws.var() / len(trace_draws) + timestep_draws.var() / len(timestep_draws))
    assert float(trace_draws.mean()) == pytest.approx(float(timestep_draws.mean()), abs=4 * error)


def _enumerated(diffusion, x0):
    """The exact ELBO and log p(x_0) of one example by summing over all trajectories."""
    forward, reverse = diffusion.forward_process, diffusion.reverse
    T = diffusion.num_steps
    dim = x0.shape[-1]
    elbo = 0.0
    joint_terms = []
    for bits in itertools.product([0.0, 1.0], repeat=T * dim):
        states = torch.tensor(bits).reshape(T, 1, dim)  # states[t - 1] is x_t
        log_q = forward.marginal(x0, T).log_prob(states[T - 1])
        log_p = diffusion.prior_distribution(1, x0).log_prob(states[T - 1])
        for t in range(T, 1, -1):
            log_q = log_q + forward.posterior(states[t - 1], x0, t).log_prob(states[t - 2])
            log_p = log_p + reverse.distribution(states[t - 1], torch.tensor(t)).log_prob(states[t - 2])
        log_p = log_p + diffusion.decoder_distribution(states[0]).log_prob(x0)
        elbo = elbo + log_q.exp().detach() * (log_p - log_q.detach())
        joint_terms.append(log_p)
    return elbo.sum(), torch.logsumexp(torch.stack(joint_terms), 0).sum()


@pytest.mark.parametrize("prediction", ["flip", "x0"])
def test_bound_below_enumerated_likelihood(prediction):
    diffusion = binomial_model(3, 2, prediction=prediction)
    x0 = torch.tensor([[1.0, 0.0]])

    exact_elbo, exact_log_p = _enumerated(diffusion, x0)
    terms = bound_terms(diffusion, x0.expand(20000, 2), torch.Generator().manual_seed(0))

    estimate = terms.elbo()
    error = float(estimate.std()) / math.sqrt(len(estimate))
    assert float(estimate.mean()) == pytest.approx(float(exact_elbo.detach()), abs=4 * error)
    assert float(exact_elbo.detach()) < float(exact_log_p.detach())


@pytest.mark.parametrize("prediction", ["flip", "x0"])
def test_trace_elbo_gradient_matches_enumeration(prediction):
    diffusion = binomial_model(3, 1, prediction=prediction)
    x0 = torch.tensor([[1.0]])
    parameter = diffusion.reverse.net.output.bias

    exact_elbo, _ = _enumerated(diffusion, x0)
    (exact_gradient,) = torch.autograd.grad(exact_elbo, parameter)

    elbo = Trace_ELBO(num_particles=20000, vectorize_particles=True, max_plate_nesting=1)
    surrogate = -elbo.differentiable_loss(diffusion.model, diffusion.guide, x0)
    (estimated_gradient,) = torch.autograd.grad(surrogate, parameter)

    torch.testing.assert_close(estimated_gradient, exact_gradient, atol=0.05, rtol=0.05)


def test_svi_trains_heartbeat_like_data():
    diffusion = binomial_model(5, 4, width=32)
    x0 = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]).repeat(32, 1)
    loss = TimestepELBO(num_particles=4)
    svi = SVI(diffusion.model, diffusion.guide, Adam({"lr": 1e-2}), loss)

    before = float(bound_terms(diffusion, x0, torch.Generator().manual_seed(0)).elbo().mean())
    for _ in range(300):
        svi.step(x0)
    after = float(bound_terms(diffusion, x0, torch.Generator().manual_seed(0)).elbo().mean())

    assert after > before + 0.5


@pytest.mark.parametrize("value", [0.5, 2.0, -1.0])
def test_non_binary_data_raises(value):
    diffusion = binomial_model(3, 2)

    with pytest.raises(ValueError, match="binary"):
        diffusion.model(torch.tensor([[value, 0.0]]))


def test_beta_outside_range_raises():
    with pytest.raises(ValueError, match="beta_2"):
        BinomialForward(torch.tensor([0.1, 1.5]))


def test_confident_network_keeps_kl_finite():
    diffusion = binomial_model(4, 2)
    with torch.no_grad():
        diffusion.reverse.net.output.bias.fill_(-500.0)
        diffusion.reverse.net.output.bias[0] = 500.0
    x0 = torch.tensor([[1.0, 1.0], [0.0, 1.0]])

    terms = bound_terms(diffusion, x0, torch.Generator().manual_seed(0))

    assert torch.isfinite(terms.elbo()).all()


class _ConstantNet(torch.nn.Module):
    """Outputs fixed per-example values whatever x_t and t are."""

    def __init__(self, values):
        super().__init__()
        self.values = values

    def forward(self, x, t):
        return self.values.expand(x.shape)


@settings(max_examples=30, deadline=None)
@given(num_steps=st.integers(2, 40), data=st.data())
def test_x0_prediction_of_known_data_is_forward_posterior(num_steps, data):
    # A network certain of x_0 turns the x0 kernel into q(x_{t-1} | x_t, x_0).
    forward = BinomialForward(num_steps=num_steps)
    t = data.draw(st.integers(2, num_steps))
    x0 = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    x_t = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    net = _ConstantNet(30.0 * (2 * x0 - 1))
    kernel = BernoulliReverse(forward, net, (4,), prediction="x0")

    probs = kernel.distribution(x_t, torch.tensor(t)).base_dist.probs
    expected = forward.posterior(x_t, x0, torch.tensor(t)).base_dist.probs

    torch.testing.assert_close(probs, expected.float(), atol=2e-6, rtol=1e-4)


def test_x0_prediction_mixture_and_first_step():
    forward = BinomialForward(num_steps=6)
    s = torch.tensor([[0.2, 0.7, 0.5]])
    kernel = BernoulliReverse(forward, _ConstantNet(torch.logit(s)), (3,), prediction="x0")
    x_t = torch.tensor([[1.0, 0.0, 1.0]])
    t = torch.tensor(4)

    probs = kernel.distribution(x_t, t).base_dist.probs
    given_one = forward.posterior(x_t, torch.ones(1, 3), t).base_dist.probs
    given_zero = forward.posterior(x_t, torch.zeros(1, 3), t).base_dist.probs
    torch.testing.assert_close(probs, s * given_one + (1 - s) * given_zero)
    first = kernel.distribution(x_t, torch.tensor(1)).base_dist.probs
    torch.testing.assert_close(first, s)


def test_unknown_prediction_raises():
    forward = BinomialForward(num_steps=3)
    with pytest.raises(ValueError, match="x0"):
        BernoulliReverse(forward, _ConstantNet(torch.zeros(1, 2)), (2,), prediction="x1")


def test_heldout_bound_binary_null_model():
    from pyro_diffusion.likelihood import heldout_bound

    diffusion = binomial_model(4, 5)
    x0 = torch.zeros(10, 5)
    x0[:, 0] = 1.0

    result = heldout_bound(diffusion, x0, generator=torch.Generator().manual_seed(0))

    expected = 5 * (0.2 * math.log2(0.2) + 0.8 * math.log2(0.8))
    assert result["l_null_bits"] == pytest.approx(expected)
    assert result["k_minus_l_null_bits"] == pytest.approx(result["elbo_bits"] - expected)
