import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pyro_diffusion.binomial import BernoulliReverse, BinomialForward
from pyro_diffusion.exact import GaussianDataReverse
from pyro_diffusion.fewstep import (
    ddim_loc_scale,
    predict_noise_and_x0,
    sample_strided,
    sample_strided_steps,
    strided_timesteps,
)
from pyro_diffusion.forward import GaussianForward
from pyro_diffusion.model import DiffusionModel
from pyro_diffusion.nets import MLP
from pyro_diffusion.reverse import EpsilonReverse, PaperReverse, ReverseKernel
from pyro_diffusion.schedules import BetaSchedule, LearnedBetaSchedule

NUM_STEPS = 20
DATA_DIM = 3
SCHEDULES = ["paper", "linear", "cosine", "log-snr"]

# Per-coordinate data N(m, v) for the exact noise prediction.
DATA_MEAN = [0.0, 0.5, -1.0]
DATA_VARIANCE = [1.0, 0.25, 4.0]


def _seeded(seed):
    return torch.Generator().manual_seed(seed)


def _random_mlp(out_dim, seed=1, scale=0.5, data_dim=DATA_DIM, num_steps=NUM_STEPS):
    """Build an MLP and replace its zero-initialized readout with random weights of std ``scale``."""
    torch.manual_seed(seed)
    net = MLP(data_dim, out_dim, num_steps, hidden_dim=16, num_blocks=1)
    nn.init.normal_(net.output.weight, std=scale)
    nn.init.normal_(net.output.bias, std=scale)
    return net


def _epsilon_model(kind="linear", num_steps=NUM_STEPS, variance="small", event_shape=(DATA_DIM,)):
    forward = GaussianForward(BetaSchedule.from_name(kind, num_steps), event_dim=len(event_shape))
    data_dim = math.prod(event_shape)
    out_dim = 2 * data_dim if variance == "learned" else data_dim
    net = _random_mlp(out_dim, data_dim=data_dim, num_steps=num_steps)
    return DiffusionModel(forward, EpsilonReverse(forward, net, event_shape, variance))


class ExactNoise(nn.Module):
    r"""
    The exact noise prediction :math:`\mathbb{E}[\epsilon \mid x_t]` for data
    :math:`\mathcal{N}(m, v)` per coordinate. With
    :math:`s_t = \bar\alpha_t v + 1 - \bar\alpha_t` it is
    :math:`\sqrt{1 - \bar\alpha_t}\,(x_t - \sqrt{\bar\alpha_t}\, m) / s_t`,
    computed in float64.
    """

    def __init__(self, schedule, mean, variance):
        super().__init__()
        self.register_buffer("alphas_bar", schedule.alphas_bar.double().clone())
        self.register_buffer("one_minus_alphas_bar", schedule.one_minus_alphas_bar.double().clone())
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float64))
        self.register_buffer("variance", torch.tensor(variance, dtype=torch.float64))

    def forward(self, x, t):
        alpha_bar = self.alphas_bar[t].unsqueeze(-1)
        one_minus = self.one_minus_alphas_bar[t].unsqueeze(-1)
        marginal_variance = alpha_bar * self.variance + one_minus
        noise = one_minus.sqrt() * (x.double() - alpha_bar.sqrt() * self.mean) / marginal_variance
        return noise.to(x.dtype)


def _exact_models(kind, num_steps):
    forward = GaussianForward(BetaSchedule.from_name(kind, num_steps))
    net = ExactNoise(forward.schedule, DATA_MEAN, DATA_VARIANCE)
    epsilon = DiffusionModel(forward, EpsilonReverse(forward, net, (DATA_DIM,), "small"))
    exact = DiffusionModel(forward, GaussianDataReverse(forward, DATA_MEAN, DATA_VARIANCE, (DATA_DIM,)))
    return epsilon, exact


def _chain_moments(schedule, steps, mean, variance, eta):
    """
    Compute the mean and variance of x_0 after DDIM jumps along ``steps``
    from x_T ~ N(0, 1) with the exact noise prediction for data N(mean,
    variance). Every jump is linear in x_t plus independent noise, so the
    moments follow a recursion, evaluated here in float64.
    """
    alphas_bar = schedule.alphas_bar.double()
    mean = torch.tensor(mean, dtype=torch.float64)
    variance = torch.tensor(variance, dtype=torch.float64)
    chain_mean = torch.zeros_like(mean)
    chain_variance = torch.ones_like(variance)
    targets = [0] + list(steps[:-1])

    for t, s in zip(reversed(steps), reversed(targets)):
        a_t, a_s = alphas_bar[t], alphas_bar[s]
        marginal_variance = a_t * variance + 1 - a_t

        # x0_hat = gain * x_t + offset and noise_hat = noise_gain * x_t + noise_offset.
        gain = variance * a_t.sqrt() / marginal_variance
        offset = mean * (1 - gain * a_t.sqrt())
        noise_gain = (1 - a_t.sqrt() * gain) / (1 - a_t).sqrt()
        noise_offset = -a_t.sqrt() * offset / (1 - a_t).sqrt()

        if s == 0:
            sigma_squared = torch.zeros((), dtype=torch.float64)
        else:
            sigma_squared = eta**2 * (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
        direction = (1 - a_s - sigma_squared).sqrt()
        slope = a_s.sqrt() * gain + direction * noise_gain
        intercept = a_s.sqrt() * offset + direction * noise_offset

        chain_mean = slope * chain_mean + intercept
        chain_variance = slope**2 * chain_variance + sigma_squared
    return chain_mean, chain_variance


# The step subsequence.


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_timesteps_rule(data):
    num_steps = data.draw(st.integers(1, 5000), label="T")
    sampling_steps = data.draw(st.integers(1, num_steps), label="S")

    steps = strided_timesteps(num_steps, sampling_steps)

    assert len(steps) == sampling_steps
    assert all(isinstance(step, int) for step in steps)
    assert steps[-1] == num_steps
    assert steps[0] >= 1
    gaps = [later - earlier for earlier, later in zip([0] + steps[:-1], steps)]
    assert min(gaps) >= 1
    assert max(gaps) - min(gaps) <= 1
    for i, step in enumerate(steps, start=1):
        assert step == math.ceil(Fraction(i * num_steps, sampling_steps))


@pytest.mark.parametrize(
    "num_steps, sampling_steps, expected",
    [
        (10, 3, [4, 7, 10]),
        (10, 10, list(range(1, 11))),
        (7, 1, [7]),
        (1000, 50, list(range(20, 1001, 20))),
        (5, 4, [2, 3, 4, 5]),
    ],
)
def test_timesteps_examples(num_steps, sampling_steps, expected):
    assert strided_timesteps(num_steps, sampling_steps) == expected


def test_timesteps_include_one_only_when_full():
    for sampling_steps in range(1, 50):
        steps = strided_timesteps(50, sampling_steps)
        assert (steps[0] == 1) == (sampling_steps == 50)


# Stride 1 with eta = 1 is ancestral sampling.


@pytest.mark.parametrize("kind", SCHEDULES)
@pytest.mark.parametrize("variance", ["small", "large", "learned"])
def test_all_steps_eta_one_is_ancestral(kind, variance):
    diffusion = _epsilon_model(kind, variance=variance)

    strided = sample_strided(diffusion, 64, NUM_STEPS, eta=1.0, generator=_seeded(3))
    ancestral = diffusion.sample(64, generator=_seeded(3))

    assert torch.equal(strided, ancestral)


def test_paper_kernel_integer_eta_ancestral():
    forward = GaussianForward(BetaSchedule.from_name("paper", NUM_STEPS))
    diffusion = DiffusionModel(forward, PaperReverse(forward, _random_mlp(2 * DATA_DIM), (DATA_DIM,)))

    strided = sample_strided(diffusion, 16, NUM_STEPS, eta=1, generator=_seeded(4))
    ancestral = diffusion.sample(16, generator=_seeded(4))

    assert torch.equal(strided, ancestral)


@pytest.mark.parametrize("kind", SCHEDULES)
def test_unit_stride_matches_small_kernel(kind):
    diffusion = _epsilon_model(kind, variance="small").double()
    kernel = diffusion.reverse
    x_t = 2 * torch.randn(32, DATA_DIM, dtype=torch.float64, generator=_seeded(5))

    for t in range(2, NUM_STEPS + 1):
        with torch.no_grad():
            loc, scale = ddim_loc_scale(kernel, x_t, t, t - 1, eta=1.0)
            kernel_loc, kernel_log_variance = kernel.loc_log_variance(x_t, torch.tensor(t))
        torch.testing.assert_close(loc, kernel_loc)
        torch.testing.assert_close(scale.square().expand(1, 1), kernel_log_variance.exp())


@settings(max_examples=50, deadline=None)
@given(
    t=st.integers(2, NUM_STEPS),
    fraction=st.floats(0, 1, exclude_max=True),
    eta=st.floats(0, 1),
)
def test_jump_follows_ddim_update(t, fraction, eta):
    diffusion = _epsilon_model("cosine").double()
    kernel = diffusion.reverse
    t_prev = int(fraction * t)
    alphas_bar = diffusion.forward_process.schedule.alphas_bar
    a_t, a_s = alphas_bar[t], alphas_bar[t_prev]
    x_t = torch.randn(8, DATA_DIM, dtype=torch.float64, generator=_seeded(t))

    with torch.no_grad():
        loc, scale = ddim_loc_scale(kernel, x_t, t, t_prev, eta)
        noise = kernel.network_outputs(x_t, torch.tensor(t))[0]

    x0 = (x_t - (1 - a_t).sqrt() * noise) / a_t.sqrt()
    sigma = eta * ((1 - a_s) / (1 - a_t)).sqrt() * (1 - a_t / a_s).sqrt()
    expected_loc = a_s.sqrt() * x0 + (1 - a_s - sigma**2).clamp(min=0).sqrt() * noise
    torch.testing.assert_close(scale, sigma)
    torch.testing.assert_close(loc, expected_loc)


# eta = 0 is deterministic given x_T.


def test_eta_zero_same_seed_same_samples():
    diffusion = _epsilon_model()

    first = sample_strided(diffusion, 32, 7, eta=0.0, generator=_seeded(6))
    torch.manual_seed(123)
    second = sample_strided(diffusion, 32, 7, eta=0.0, generator=_seeded(6))
    other = sample_strided(diffusion, 32, 7, eta=0.0, generator=_seeded(7))

    assert torch.equal(first, second)
    assert not torch.allclose(first, other)


def test_eta_zero_draws_only_start():
    diffusion = _epsilon_model()
    generator = _seeded(8)
    reference = _seeded(8)

    trajectory = list(sample_strided_steps(diffusion, 32, 7, eta=0.0, generator=generator))
    start = torch.randn(32, DATA_DIM, generator=reference)

    assert torch.equal(trajectory[0][1], start)
    assert torch.equal(generator.get_state(), reference.get_state())


def test_eta_positive_draws_every_jump():
    diffusion = _epsilon_model()
    generator = _seeded(8)
    reference = _seeded(8)

    sample_strided(diffusion, 32, 7, eta=0.5, generator=generator)
    # x_T, then one draw per jump except the last, which lands on t = 0.
    for _ in range(7):
        torch.randn(32, DATA_DIM, generator=reference)

    assert torch.equal(generator.get_state(), reference.get_state())


def test_eta_zero_all_steps_draws_decoder():
    diffusion = _epsilon_model()
    generator = _seeded(9)
    reference = _seeded(9)

    trajectory = list(sample_strided_steps(diffusion, 32, NUM_STEPS, eta=0.0, generator=generator))
    # x_T and the decoder's draw.
    for _ in range(2):
        torch.randn(32, DATA_DIM, generator=reference)

    assert torch.equal(generator.get_state(), reference.get_state())
    assert [t for t, _ in trajectory] == list(range(NUM_STEPS, -1, -1))


def test_yielded_steps_follow_grid():
    diffusion = _epsilon_model()

    trajectory = list(sample_strided_steps(diffusion, 4, 3, eta=0.3, generator=_seeded(10)))

    assert [t for t, _ in trajectory] == [20, 14, 7, 0]
    assert all(x.shape == (4, DATA_DIM) for _, x in trajectory)


def test_single_jump_ignores_eta():
    diffusion = _epsilon_model()

    deterministic = sample_strided(diffusion, 16, 1, eta=0.0, generator=_seeded(11))
    stochastic = sample_strided(diffusion, 16, 1, eta=1.0, generator=_seeded(11))

    assert torch.equal(deterministic, stochastic)


def test_last_jump_returns_predicted_x0():
    diffusion = _epsilon_model()
    trajectory = list(sample_strided_steps(diffusion, 16, 4, eta=0.7, generator=_seeded(12)))
    (first_step, x_first), (last_step, x0) = trajectory[-2], trajectory[-1]

    with torch.no_grad():
        expected = diffusion.reverse.predict_x0(x_first, torch.tensor(first_step))

    assert first_step == 5
    assert last_step == 0
    torch.testing.assert_close(x0, expected)


# Moments with the exact noise prediction for Gaussian data.


def test_exact_kernels_predict_same_x0():
    epsilon, exact = _exact_models("linear", 200)
    epsilon, exact = epsilon.double(), exact.double()
    x_t = 3 * torch.randn(64, DATA_DIM, dtype=torch.float64, generator=_seeded(13))

    for t in [1, 2, 20, 100, 199, 200]:
        with torch.no_grad():
            noise, x0 = predict_noise_and_x0(epsilon.reverse, x_t, t)
            noise_from_mean, x0_from_mean = predict_noise_and_x0(exact.reverse, x_t, t)
        torch.testing.assert_close(x0_from_mean, x0)
        torch.testing.assert_close(noise_from_mean, noise)


@pytest.mark.parametrize("kernel", ["epsilon", "exact"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_few_steps_match_chain_moments(kernel, eta):
    num_samples = 20000
    models = dict(zip(["epsilon", "exact"], _exact_models("linear", 200)))
    diffusion = models[kernel]
    steps = strided_timesteps(200, 10)

    samples = sample_strided(diffusion, num_samples, 10, eta=eta, generator=_seeded(14)).double()
    expected_mean, expected_variance = _chain_moments(
        diffusion.forward_process.schedule, steps, DATA_MEAN, DATA_VARIANCE, eta
    )

    # Five standard errors of the sample mean and of the sample variance.
    mean_error = 5 * (expected_variance / num_samples).sqrt()
    variance_error = 5 * expected_variance * math.sqrt(2 / (num_samples - 1))
    assert ((samples.mean(0) - expected_mean).abs() < mean_error).all()
    assert ((samples.var(0) - expected_variance).abs() < variance_error).all()


def test_few_steps_shrink_variance():
    # The figures quoted in the docstring of pyro_diffusion.fewstep.
    schedule = BetaSchedule.from_name("linear", 200)
    steps = strided_timesteps(200, 10)

    more_steps = strided_timesteps(200, 50)

    _, deterministic = _chain_moments(schedule, steps, [0.0], [1.0], 0.0)
    _, stochastic = _chain_moments(schedule, steps, [0.0], [1.0], 1.0)
    _, deterministic_more = _chain_moments(schedule, more_steps, [0.0], [1.0], 0.0)
    _, stochastic_more = _chain_moments(schedule, more_steps, [0.0], [1.0], 1.0)

    assert round(float(deterministic), 2) == 0.69
    assert round(float(stochastic), 2) == 0.55
    assert round(float(deterministic_more), 2) == 0.93
    assert round(float(stochastic_more), 2) == 0.86


def test_eta_zero_maps_start_linearly():
    epsilon, _ = _exact_models("cosine", 50)
    steps = strided_timesteps(50, 5)
    trajectory = list(sample_strided_steps(epsilon, 5000, 5, generator=_seeded(15)))
    start, x0 = trajectory[0][1].double(), trajectory[-1][1].double()
    expected_mean, expected_variance = _chain_moments(
        epsilon.forward_process.schedule, steps, DATA_MEAN, DATA_VARIANCE, 0.0
    )

    # Each coordinate of x_0 is slope * x_T + intercept, with slope^2 the
    # chain's variance, up to float32 rounding of the sampler.
    slope = expected_variance.sqrt()
    torch.testing.assert_close(x0, slope * start + expected_mean, rtol=1e-4, atol=1e-4)


# The general Gaussian-kernel path.


class MeanOnly(ReverseKernel):
    """A kernel that hides an EpsilonReverse behind its mean and variance."""

    def __init__(self, inner):
        super().__init__(inner.forward_process, inner.net, inner.event_shape, inner.num_outputs)
        self.inner = inner

    def loc_log_variance(self, x_t, t):
        return self.inner.loc_log_variance(x_t, t)


@pytest.mark.parametrize("kind", SCHEDULES)
def test_noise_from_mean_matches_network(kind):
    epsilon = _epsilon_model(kind, variance="learned").double().reverse
    wrapped = MeanOnly(epsilon)
    x_t = 2 * torch.randn(32, DATA_DIM, dtype=torch.float64, generator=_seeded(16))

    for t in [1, 2, NUM_STEPS // 2, NUM_STEPS]:
        with torch.no_grad():
            noise, x0 = predict_noise_and_x0(epsilon, x_t, t)
            noise_from_mean, x0_from_mean = predict_noise_and_x0(wrapped, x_t, t)
            expected_x0 = epsilon.predict_x0(x_t, torch.tensor(t))
            expected_noise = epsilon.network_outputs(x_t, torch.tensor(t))[0]
        torch.testing.assert_close(x0, expected_x0)
        torch.testing.assert_close(noise, expected_noise)
        torch.testing.assert_close(x0_from_mean, x0)
        torch.testing.assert_close(noise_from_mean, noise)


def test_paper_kernel_samples():
    forward = GaussianForward(BetaSchedule.from_name("paper", NUM_STEPS))
    diffusion = DiffusionModel(forward, PaperReverse(forward, _random_mlp(2 * DATA_DIM), (DATA_DIM,)))

    samples = sample_strided(diffusion, 64, 5, eta=0.5, generator=_seeded(17))

    assert samples.shape == (64, DATA_DIM)
    assert torch.isfinite(samples).all()


# Shapes, dtypes and other models.


def test_image_event_shape():
    diffusion = _epsilon_model(event_shape=(2, 3))

    samples = sample_strided(diffusion, 5, 4, eta=1.0, generator=_seeded(18))

    assert samples.shape == (5, 2, 3)


def test_dtype_follows_parameters():
    diffusion = _epsilon_model().double()

    samples = sample_strided(diffusion, 5, 4, generator=_seeded(19))

    assert samples.dtype == torch.float64


def test_no_gradient_graph():
    diffusion = _epsilon_model()

    samples = sample_strided(diffusion, 5, 4, eta=0.5, generator=_seeded(20))

    assert not samples.requires_grad


def test_learned_schedule_samples():
    forward = GaussianForward(LearnedBetaSchedule.from_name("linear", NUM_STEPS))
    diffusion = DiffusionModel(forward, EpsilonReverse(forward, _random_mlp(DATA_DIM), (DATA_DIM,), "small"))

    samples = sample_strided(diffusion, 8, 4, eta=1.0, generator=_seeded(21))

    assert samples.shape == (8, DATA_DIM)
    assert torch.isfinite(samples).all()


# Invalid input.


@pytest.mark.parametrize("sampling_steps", [0, -3, NUM_STEPS + 1])
def test_rejects_steps_out_of_range(sampling_steps):
    diffusion = _epsilon_model()

    with pytest.raises(ValueError, match=rf"sampling_steps = {sampling_steps} is outside 1\.\.{NUM_STEPS}"):
        sample_strided(diffusion, 4, sampling_steps)


@pytest.mark.parametrize("sampling_steps", [2.5, 10.0, "10", True, None])
def test_rejects_non_integer_steps(sampling_steps):
    diffusion = _epsilon_model()

    with pytest.raises(ValueError, match="sampling_steps must be an integer"):
        sample_strided(diffusion, 4, sampling_steps)


@pytest.mark.parametrize("eta", [-0.1, float("nan"), float("inf"), -float("inf")])
def test_rejects_invalid_eta(eta):
    diffusion = _epsilon_model()

    with pytest.raises(ValueError, match=r"eta = .* is invalid: pass a finite eta >= 0"):
        sample_strided(diffusion, 4, 5, eta=eta)


@pytest.mark.parametrize("eta", ["0", None, True])
def test_rejects_non_number_eta(eta):
    diffusion = _epsilon_model()

    with pytest.raises(ValueError, match="eta must be a real number"):
        sample_strided(diffusion, 4, 5, eta=eta)


def test_eta_above_one_checked_against_grid():
    diffusion = _epsilon_model("linear", num_steps=200)
    schedule = diffusion.forward_process.schedule
    steps = strided_timesteps(200, 10)
    alphas_bar = schedule.alphas_bar
    ratios = [
        (1 - alphas_bar[t] / alphas_bar[s]) / (1 - alphas_bar[t]) for s, t in zip(steps[:-1], steps[1:])
    ]
    max_eta = float(max(ratios)) ** -0.5

    samples = sample_strided(diffusion, 8, 10, eta=0.999 * max_eta, generator=_seeded(22))
    with pytest.raises(ValueError, match=r"pass eta <= "):
        sample_strided(diffusion, 8, 10, eta=1.001 * max_eta)

    assert max_eta > 1
    assert torch.isfinite(samples).all()


@pytest.mark.parametrize("num_samples", [0, -1, 1.5, "4"])
def test_rejects_invalid_num_samples(num_samples):
    diffusion = _epsilon_model()

    with pytest.raises(ValueError, match="num_samples"):
        sample_strided(diffusion, num_samples, 5)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_rejects_binomial_model(eta):
    forward = BinomialForward(num_steps=NUM_STEPS)
    diffusion = DiffusionModel(forward, BernoulliReverse(forward, _random_mlp(DATA_DIM), (DATA_DIM,)))

    with pytest.raises(ValueError, match="few-step sampling needs a Gaussian diffusion model"):
        sample_strided(diffusion, 4, NUM_STEPS, eta=eta)


class NoMean(ReverseKernel):
    """A Gaussian kernel that leaves loc_log_variance unimplemented."""


def test_rejects_kernel_without_mean():
    forward = GaussianForward(BetaSchedule.from_name("linear", NUM_STEPS))
    diffusion = DiffusionModel(forward, NoMean(forward, _random_mlp(DATA_DIM), (DATA_DIM,), 1))

    with pytest.raises(ValueError, match="NoMean does not implement loc_log_variance"):
        sample_strided(diffusion, 4, 5)


def test_rejects_jump_out_of_order():
    kernel = _epsilon_model().reverse
    x_t = torch.randn(4, DATA_DIM)

    with pytest.raises(ValueError, match="the jump from t = 3 to t_prev = 3 is invalid"):
        ddim_loc_scale(kernel, x_t, 3, 3, eta=0.0)
    with pytest.raises(ValueError, match="is invalid"):
        ddim_loc_scale(kernel, x_t, NUM_STEPS + 1, 0, eta=0.0)
