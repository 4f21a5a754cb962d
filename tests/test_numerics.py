"""
Numerical checks of the bound and its one-step estimator at long chains in
float32, at the first and last steps, and on extreme but valid data.
"""

import math

import pytest
import torch
from pyro.infer import Trace_ELBO
from torch.overrides import TorchFunctionMode

from pyro_diffusion.elbo import TimestepELBO
from pyro_diffusion.forward import GaussianForward
from pyro_diffusion.likelihood import bound_terms
from pyro_diffusion.model import DiffusionModel
from pyro_diffusion.nets import MLP
from pyro_diffusion.reverse import EpsilonReverse, PaperReverse
from pyro_diffusion.schedules import BetaSchedule, LearnedBetaSchedule, ScheduleKind
from pyro_diffusion.timesteps import UniformTimesteps

KINDS = [kind.value for kind in ScheduleKind]
DATA_DIM = 3

#: Reverse kernels under test: the three variances of ``EpsilonReverse``,
#: ``PaperReverse``, and ``EpsilonReverse`` with a learned beta schedule.
KERNELS = ["small", "large", "learned", "paper", "learned-schedule"]


class FixedTimesteps(UniformTimesteps):
    """
    A time-step proposal that draws ``step`` for every example, with the
    uniform weight ``T - 1``, and records the steps and terms that
    ``TimestepELBO`` reports back.
    """

    def __init__(self, step):
        self.step = step
        self.updates = []

    def draw(self, batch_size, num_steps, device=None, generator=None):
        t = torch.full((batch_size,), self.step, dtype=torch.long, device=device)
        weight = torch.full((batch_size,), float(num_steps - 1), device=device)
        return t, weight

    def update(self, t, terms):
        self.updates.append((t.clone(), terms.detach().clone()))


def _random_mlp(num_steps, out_dim, seed=0):
    """Build a small MLP whose zero-initialized readout is replaced by random weights."""
    torch.manual_seed(seed)
    net = MLP(DATA_DIM, out_dim, num_steps, hidden_dim=8, num_blocks=1)
    torch.nn.init.normal_(net.output.weight, std=0.5)
    torch.nn.init.normal_(net.output.bias, std=0.5)
    return net


def _model(kind, num_steps, kernel="learned", cast_to_float32=False):
    """
    Build a float32 model with a random MLP kernel. With
    ``cast_to_float32`` the whole model, schedule tables included, is cast
    with ``.float()``. Otherwise the schedule keeps its float64 tables.
    """
    if kernel == "learned-schedule":
        schedule = LearnedBetaSchedule.from_name(kind, num_steps)
    else:
        schedule = BetaSchedule.from_name(kind, num_steps)
    forward = GaussianForward(schedule)
    if kernel == "paper":
        reverse = PaperReverse(forward, _random_mlp(num_steps, 2 * DATA_DIM), (DATA_DIM,))
    elif kernel in ("learned", "learned-schedule"):
        reverse = EpsilonReverse(forward, _random_mlp(num_steps, 2 * DATA_DIM), (DATA_DIM,), "learned")
    else:
        reverse = EpsilonReverse(forward, _random_mlp(num_steps, DATA_DIM), (DATA_DIM,), kernel)
    model = DiffusionModel(forward, reverse)
    return model.float() if cast_to_float32 else model


def _loss_and_gradients(model, x0, step):
    """
    Evaluate the ``TimestepELBO`` loss with every example at ``step`` and
    its gradient with respect to every parameter of the model.

    :returns: ``(loss, gradients, sampler)``, ``gradients`` a dict from
        parameter name to gradient, ``None`` for a parameter the loss does
        not reach.
    """
    sampler = FixedTimesteps(step)
    loss = TimestepELBO(sampler=sampler).differentiable_loss(model.model, model.guide, x0)
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    gradients = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    return loss, {name: g for (name, _), g in zip(named, gradients)}, sampler


def _assert_gradients_finite(gradients):
    assert gradients["reverse.net.output.weight"] is not None
    for name, gradient in gradients.items():
        if gradient is not None:
            assert torch.isfinite(gradient).all(), name


@pytest.mark.parametrize("num_steps", [1000, 4000])
@pytest.mark.parametrize("kind", KINDS)
def test_bound_terms_finite_long_chain(kind, num_steps):
    model = _model(kind, num_steps, cast_to_float32=True)
    x0 = torch.randn(4, DATA_DIM)

    terms = bound_terms(model, x0, torch.Generator().manual_seed(0))

    assert terms.diffusion.shape == (4, num_steps - 1)
    assert terms.diffusion.dtype == torch.float32
    assert torch.isfinite(terms.prior).all()
    assert torch.isfinite(terms.diffusion[:, 0]).all(), "step t = 2"
    assert torch.isfinite(terms.diffusion[:, -1]).all(), "step t = T"
    assert torch.isfinite(terms.diffusion).all()
    assert torch.isfinite(terms.decoder).all()
    assert torch.isfinite(terms.elbo()).all()


@pytest.mark.parametrize("kernel", ["small", "large", "paper", "learned-schedule"])
def test_bound_terms_finite_kernels_at_4000_steps(kernel):
    # The cosine schedule ends at beta_T = 0.999 and starts at beta_1 near
    # 1e-5, the widest range of the four.
    model = _model("cosine", 4000, kernel)
    x0 = torch.randn(3, DATA_DIM)

    terms = bound_terms(model, x0, torch.Generator().manual_seed(0))

    assert torch.isfinite(terms.prior).all()
    assert torch.isfinite(terms.diffusion[:, 0]).all(), "step t = 2"
    assert torch.isfinite(terms.diffusion[:, -1]).all(), "step t = T"
    assert torch.isfinite(terms.diffusion).all()
    assert torch.isfinite(terms.decoder).all()


@pytest.mark.parametrize("cast_to_float32", [False, True], ids=["float64-tables", "float32-tables"])
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("num_steps", [1000, 4000])
@pytest.mark.parametrize("kind", KINDS)
def test_timestep_elbo_finite_first_and_last_step(kind, num_steps, kernel, cast_to_float32):
    model = _model(kind, num_steps, kernel, cast_to_float32)
    x0 = torch.randn(4, DATA_DIM)

    for step in (2, num_steps):
        loss, gradients, sampler = _loss_and_gradients(model, x0, step)

        assert torch.isfinite(loss), f"t = {step}"
        _assert_gradients_finite(gradients)
        assert len(sampler.updates) == 1
        drawn, step_terms = sampler.updates[0]
        assert (drawn == step).all()
        assert torch.isfinite(step_terms).all(), f"t = {step}"


@pytest.mark.parametrize("num_steps", [2, 1000, 4000])
@pytest.mark.parametrize("kind", KINDS)
def test_posterior_variance_zero_at_first_step(kind, num_steps):
    fixed = BetaSchedule.from_name(kind, num_steps)
    learned = LearnedBetaSchedule.from_name(kind, num_steps)
    float32 = BetaSchedule.from_name(kind, num_steps).float()

    for schedule in (fixed, learned, float32):
        posterior_variance = schedule.posterior_variance
        log_clipped = schedule.log_posterior_variance_clipped
        assert posterior_variance[1].item() == 0.0
        assert (posterior_variance[2:] > 0).all()
        assert torch.isfinite(log_clipped).all()
        assert torch.isfinite(schedule.log_betas).all()
        assert torch.isfinite(schedule.logit_betas).all()
        # At t = 1 the lower end of the reverse variance is the step-2 value.
        expected_first = math.log(posterior_variance[2].item())
        assert log_clipped[1].item() == pytest.approx(expected_first, rel=1e-6)


class NonFiniteWatch(TorchFunctionMode):
    """
    Record every logarithm taken of a non-positive value, and every
    floating-point result of a torch function that contains NaN or an
    infinity, while the mode is active. Results of the functions that
    allocate uninitialized memory are not checked.
    """

    LOG_FUNCTIONS = {
        torch.log,
        torch.log2,
        torch.log10,
        torch.Tensor.log,
        torch.Tensor.log_,
        torch.Tensor.log2,
        torch.Tensor.log10,
    }
    UNINITIALIZED = {torch.empty, torch.empty_like, torch.empty_strided, torch.Tensor.new_empty}

    def __init__(self):
        super().__init__()
        self.logs_of_nonpositive = []
        self.nonfinite_results = []
        self.num_logs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        name = getattr(func, "__qualname__", repr(func))
        if func in self.LOG_FUNCTIONS:
            self.num_logs += 1
            if torch.is_tensor(args[0]) and (args[0] <= 0).any():
                self.logs_of_nonpositive.append(name)
        if func in self.UNINITIALIZED or not torch.is_tensor(result) or not result.is_floating_point():
            return result
        if not torch.isfinite(result).all():
            self.nonfinite_results.append(name)
        return result


@pytest.mark.filterwarnings("ignore:Anomaly Detection has been enabled")
@pytest.mark.parametrize("kernel", KERNELS)
def test_no_log_of_zero_posterior_variance(kernel):
    # The schedule is built inside the watch, so a zero reaching a logarithm
    # while its tables are computed is recorded too.
    num_steps = 8
    x0 = torch.randn(4, DATA_DIM)
    watch = NonFiniteWatch()

    with watch, torch.autograd.detect_anomaly():
        model = _model("cosine", num_steps, kernel)
        terms = bound_terms(model, x0, torch.Generator().manual_seed(0))
        gradients = []
        for step in (2, num_steps):
            _, step_gradients, _ = _loss_and_gradients(model, x0, step)
            gradients.append(step_gradients)
        parameters = [p for p in model.parameters() if p.requires_grad]
        trace_loss = Trace_ELBO().differentiable_loss(model.model, model.guide, x0)
        trace_gradients = torch.autograd.grad(trace_loss, parameters, allow_unused=True)

    assert watch.num_logs > 0
    assert watch.logs_of_nonpositive == []
    assert watch.nonfinite_results == []
    assert torch.isfinite(terms.elbo()).all()
    for step_gradients in gradients:
        _assert_gradients_finite(step_gradients)
    for gradient in trace_gradients:
        assert gradient is None or torch.isfinite(gradient).all()


class ConstantX0Net(torch.nn.Module):
    r"""
    A noise-prediction network whose implied prediction of the data is the
    parameter ``x0_hat`` for every input:
    :math:`\hat\epsilon = (x_t - \sqrt{\bar\alpha_t}\,\hat x_0) / \sqrt{1 - \bar\alpha_t}`.
    """

    def __init__(self, schedule, x0_hat):
        super().__init__()
        self.schedule = schedule
        self.x0_hat = torch.nn.Parameter(x0_hat.clone())

    def forward(self, x, t):
        sqrt_alphas_bar = self.schedule.sqrt_alphas_bar[t].to(x.dtype).unsqueeze(-1)
        sqrt_one_minus = self.schedule.sqrt_one_minus_alphas_bar[t].to(x.dtype).unsqueeze(-1)
        return (x - sqrt_alphas_bar * self.x0_hat) / sqrt_one_minus


#: A prediction of x_0 far outside [-1, 1], and data inside it.
X0_HAT = torch.tensor([5.0, -40.0, 300.0], dtype=torch.float64)
DATA = torch.tensor([[0.5, -0.25, 1.0], [-1.0, 0.0, 0.75]], dtype=torch.float64)


def _constant_x0_model(kind, num_steps, variance):
    forward = GaussianForward(BetaSchedule.from_name(kind, num_steps))
    net = ConstantX0Net(forward.schedule, X0_HAT)
    return DiffusionModel(forward, EpsilonReverse(forward, net, (DATA_DIM,), variance))


def _gaussian_kl(mean_q, variance_q, mean_p, variance_p):
    """KL(N(mean_q, variance_q) || N(mean_p, variance_p)) summed over the last dimension."""
    ratio = variance_q / variance_p
    return 0.5 * (ratio - 1 - ratio.log() + (mean_q - mean_p) ** 2 / variance_p).sum(-1)


def _reverse_variance(schedule, variance, t):
    if variance == "small":
        return schedule.log_posterior_variance_clipped[t].exp()
    return schedule.betas[t]


@pytest.mark.parametrize("variance", ["small", "large"])
@pytest.mark.parametrize("kind", KINDS)
def test_predicted_x0_unclipped_in_kernel_mean(kind, variance):
    num_steps = 100
    model = _constant_x0_model(kind, num_steps, variance)
    reverse, schedule = model.reverse, model.forward_process.schedule
    x_t = 2.0 * torch.randn(2, DATA_DIM, dtype=torch.float64)

    for t in (1, 2, num_steps // 2, num_steps):
        step = torch.tensor(t)
        with torch.no_grad():
            loc, _ = reverse.loc_log_variance(x_t, step)
            x0_hat = reverse.predict_x0(x_t, step)

        # The forward posterior mean coef_x0 * x0 + coef_xt * x_t, with x0 the unclipped prediction.
        expected = schedule.posterior_coef_x0[t] * X0_HAT + schedule.posterior_coef_xt[t] * x_t
        torch.testing.assert_close(x0_hat, X0_HAT.expand(2, DATA_DIM), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(loc, expected, rtol=1e-9, atol=1e-9)


def _closed_form_terms(schedule, variance, x0):
    """
    Compute the prior, every diffusion term and the decoder term for the
    ``ConstantX0Net`` kernel. The mean difference of each KL is
    ``coef_x0 * (x0 - x0_hat)`` whatever ``x_t`` is, so every term is exact.
    """
    num_steps = schedule.num_steps
    alpha_bar_last = schedule.alphas_bar[num_steps]
    prior = _gaussian_kl(alpha_bar_last.sqrt() * x0, 1 - alpha_bar_last, torch.zeros_like(x0), torch.ones_like(x0))
    diffusion = []
    for t in range(2, num_steps + 1):
        offset = schedule.posterior_coef_x0[t] * (x0 - X0_HAT)
        diffusion.append(
            _gaussian_kl(offset, schedule.posterior_variance[t], torch.zeros_like(x0), _reverse_variance(schedule, variance, t))
        )
    decoder_variance = _reverse_variance(schedule, variance, 1)
    decoder = -0.5 * (math.log(2 * math.pi) + decoder_variance.log() + (x0 - X0_HAT) ** 2 / decoder_variance).sum(-1)
    return prior, torch.stack(diffusion, -1), decoder


@pytest.mark.parametrize("variance", ["small", "large"])
@pytest.mark.parametrize("kind", KINDS)
def test_predicted_x0_unclipped_in_bound(kind, variance):
    num_steps = 100
    model = _constant_x0_model(kind, num_steps, variance)
    schedule = model.forward_process.schedule

    terms = bound_terms(model, DATA, torch.Generator().manual_seed(0))

    prior, diffusion, decoder = _closed_form_terms(schedule, variance, DATA)
    torch.testing.assert_close(terms.prior, prior, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(terms.diffusion, diffusion, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(terms.decoder, decoder, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("variance", ["small", "large"])
@pytest.mark.parametrize("kind", KINDS)
def test_predicted_x0_unclipped_in_timestep_elbo(kind, variance):
    num_steps = 100
    model = _constant_x0_model(kind, num_steps, variance)
    schedule = model.forward_process.schedule
    prior, diffusion, decoder = _closed_form_terms(schedule, variance, DATA)

    for step in (2, num_steps):
        sampler = FixedTimesteps(step)
        elbo = TimestepELBO(sampler=sampler).elbo_per_example(model.model, model.guide, DATA)

        expected = decoder - prior - (num_steps - 1) * diffusion[:, step - 2]
        torch.testing.assert_close(elbo.detach(), expected, rtol=1e-7, atol=1e-7)


#: Extreme but valid data sets of shape [N, DATA_DIM], float32.
EXTREME_DATA = {
    "plus-1e4": torch.full((4, DATA_DIM), 1e4),
    "minus-1e4": torch.full((4, DATA_DIM), -1e4),
    "mixed-1e4": torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e-30], [1e4, 1e4, -1e4], [0.0, -1e4, 1e4]]),
    "tiny-1e-30": torch.full((4, DATA_DIM), 1e-30),
    "zeros": torch.zeros(4, DATA_DIM),
    "constant-columns": torch.tensor([[3.0, -2.0, 7.0]]).expand(5, DATA_DIM).clone(),
    "single-example": torch.tensor([[0.3, -1e4, 1e-30]]),
}


@pytest.mark.parametrize("kernel", ["learned", "paper", "learned-schedule"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("data", list(EXTREME_DATA), ids=list(EXTREME_DATA))
def test_extreme_data_finite_gradients(data, kind, kernel):
    num_steps = 1000
    model = _model(kind, num_steps, kernel)
    x0 = EXTREME_DATA[data]

    for step in (2, num_steps // 2, num_steps):
        loss, gradients, _ = _loss_and_gradients(model, x0, step)

        assert torch.isfinite(loss), f"t = {step}"
        _assert_gradients_finite(gradients)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("kind", KINDS)
def test_single_example_finite_gradients_at_4000_steps(kind, kernel):
    num_steps = 4000
    model = _model(kind, num_steps, kernel, cast_to_float32=True)
    x0 = torch.tensor([[1e4, -1e4, 1e-30]])

    for step in (2, num_steps):
        loss, gradients, _ = _loss_and_gradients(model, x0, step)

        assert torch.isfinite(loss), f"t = {step}"
        _assert_gradients_finite(gradients)

    uniform_loss = TimestepELBO().differentiable_loss(model.model, model.guide, x0)
    uniform_loss.backward()
    for name, parameter in model.named_parameters():
        if parameter.grad is not None:
            assert torch.isfinite(parameter.grad).all(), name


@pytest.mark.parametrize("kind", KINDS)
def test_bound_terms_finite_on_extreme_data(kind):
    model = _model(kind, 1000, cast_to_float32=True)
    x0 = torch.cat([EXTREME_DATA["mixed-1e4"], EXTREME_DATA["tiny-1e-30"], EXTREME_DATA["single-example"]])

    terms = bound_terms(model, x0, torch.Generator().manual_seed(0))

    assert torch.isfinite(terms.prior).all()
    assert torch.isfinite(terms.diffusion).all()
    assert torch.isfinite(terms.decoder).all()
    assert (terms.prior >= 0).all()
