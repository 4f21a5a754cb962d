import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from pyro.poutine.util import site_is_subsample
from scipy import stats

from pyro_diffusion.elbo import TimestepELBO
from pyro_diffusion.exact import GaussianDataReverse, linear_chain_marginal
from pyro_diffusion.forward import GaussianForward
from pyro_diffusion.likelihood import bound_terms
from pyro_diffusion.model import DiffusionModel
from pyro_diffusion.nets import MLP
from pyro_diffusion.reverse import EpsilonReverse
from pyro_diffusion.schedules import BetaSchedule

DATA_DIM = 2


def _random_model(num_steps=5, seed=0):
    """Build a model whose MLP kernel has a random readout in place of the zero one."""
    torch.manual_seed(seed)
    forward = GaussianForward(BetaSchedule.from_name("paper", num_steps))
    net = MLP(DATA_DIM, 2 * DATA_DIM, num_steps, hidden_dim=16, num_blocks=1)
    torch.nn.init.normal_(net.output.weight, std=0.5)
    torch.nn.init.normal_(net.output.bias, std=0.5)
    return DiffusionModel(forward, EpsilonReverse(forward, net, (DATA_DIM,), "learned"))


def _gaussian_model(num_steps, mean, variance, event_shape=(DATA_DIM,), kind="paper"):
    forward = GaussianForward(BetaSchedule.from_name(kind, num_steps), event_dim=len(event_shape))
    return DiffusionModel(forward, GaussianDataReverse(forward, mean, variance, event_shape))


def _sample_sites(trace):
    return [
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site_is_subsample(site)
    ]


def test_model_site_names():
    model = _random_model(num_steps=3)
    x0 = torch.randn(4, DATA_DIM)

    trace = poutine.trace(model.model).get_trace(x0)

    sites = _sample_sites(trace)
    assert sites == ["x_3", "x_2", "x_1", "x_0"]
    assert trace.nodes["x_0"]["is_observed"]
    assert not any(trace.nodes[name]["is_observed"] for name in sites[:-1])


def test_guide_site_names():
    model = _random_model(num_steps=3)
    x0 = torch.randn(4, DATA_DIM)

    trace = poutine.trace(model.guide).get_trace(x0)

    sites = _sample_sites(trace)
    assert sites == ["x_3", "x_2", "x_1"]


def test_sites_inside_data_plate():
    model = _random_model(num_steps=3)
    x0 = torch.randn(4, DATA_DIM)

    trace = poutine.trace(model.model).get_trace(x0)
    trace.compute_log_prob()

    for name in ["x_3", "x_2", "x_1", "x_0"]:
        frames = [frame.name for frame in trace.nodes[name]["cond_indep_stack"]]
        assert frames == ["data"], name
        assert trace.nodes[name]["log_prob"].shape == (4,), name


def test_single_step_sites():
    model = _random_model(num_steps=1)
    x0 = torch.randn(4, DATA_DIM)

    model_trace = poutine.trace(model.model).get_trace(x0)
    guide_trace = poutine.trace(model.guide).get_trace(x0)

    assert _sample_sites(model_trace) == ["x_1", "x_0"]
    assert _sample_sites(guide_trace) == ["x_1"]


def _param_names(prefix):
    return {name for name in pyro.get_param_store().keys() if name.startswith(prefix + ".")}


def test_two_models_distinct_params():
    first, second = _random_model(seed=0), _random_model(seed=1)
    x0 = torch.randn(8, DATA_DIM)
    first.model(x0)
    second.model(x0)

    first_names = _param_names(first._pyro_name)
    second_names = _param_names(second._pyro_name)
    assert first._pyro_name != second._pyro_name
    assert first_names
    assert len(first_names) == len(second_names)
    assert not first_names & second_names


def test_training_one_model_leaves_other():
    first, second = _random_model(seed=0), _random_model(seed=1)
    x0 = torch.randn(8, DATA_DIM)
    second.model(x0)
    before = {name: p.detach().clone() for name, p in second.reverse.named_parameters()}
    first_before = first.reverse.net.output.weight.detach().clone()

    svi = SVI(first.model, first.guide, Adam({"lr": 1e-2}), loss=Trace_ELBO())
    svi.step(x0)

    for name, parameter in second.reverse.named_parameters():
        assert torch.equal(parameter, before[name]), name
    assert not torch.equal(first.reverse.net.output.weight, first_before)


def test_sample_reproducible_for_seed():
    model = _random_model()

    first = model.sample(50, generator=torch.Generator().manual_seed(7))
    second = model.sample(50, generator=torch.Generator().manual_seed(7))

    assert torch.equal(first, second)


def test_sample_differs_across_seeds():
    model = _random_model()

    first = model.sample(50, generator=torch.Generator().manual_seed(7))
    second = model.sample(50, generator=torch.Generator().manual_seed(8))

    assert not torch.equal(first, second)


def test_sample_shape_and_dtype():
    model = _random_model()

    samples = model.sample(13, generator=torch.Generator().manual_seed(0))

    assert samples.shape == (13, DATA_DIM)
    assert samples.dtype == torch.float32
    assert torch.isfinite(samples).all()


def test_sample_image_shape():
    model = _gaussian_model(4, 0.5, 2.0, event_shape=(1, 2, 3))

    samples = model.sample(5)

    assert samples.shape == (5, 1, 2, 3)


def test_sample_steps_visit_every_step():
    model = _random_model(num_steps=4)

    steps = [t for t, _ in model.sample_steps(3)]

    assert steps == [4, 3, 2, 1, 0]


def test_sample_rejects_zero_count():
    model = _random_model()

    with pytest.raises(ValueError, match="got 0"):
        model.sample(0)


def test_sample_matches_traced_model():
    model = _random_model()
    num_samples = 3000

    with torch.no_grad():
        direct = model.sample(num_samples, generator=torch.Generator().manual_seed(1))
        trace = poutine.trace(model.model).get_trace(num_samples=num_samples)
    traced = trace.nodes["x_0"]["value"]

    assert traced.shape == direct.shape
    for dim in range(DATA_DIM):
        result = stats.ks_2samp(direct[:, dim].numpy(), traced[:, dim].numpy())
        assert result.pvalue > 1e-3, f"dimension {dim}: {result}"


def test_traced_model_returns_decoded_site():
    model = _random_model()

    trace = poutine.trace(model.model).get_trace(num_samples=6)

    assert torch.equal(trace.nodes["_RETURN"]["value"], trace.nodes["x_0"]["value"])
    assert not trace.nodes["x_0"]["is_observed"]


@pytest.mark.parametrize("mean, variance", [(0.0, 1.0), (2.0, 0.5)])
def test_gaussian_kernel_sample_marginal(mean, variance):
    model = _gaussian_model(5, mean, variance)
    num_samples = 3000

    samples = model.sample(num_samples, generator=torch.Generator().manual_seed(2))

    reverse = model.reverse
    model_mean, model_variance = linear_chain_marginal(
        reverse.loc_coef, reverse.loc_offset, reverse.log_variance
    )
    for dim in range(DATA_DIM):
        scale = math.sqrt(model_variance[dim].item())
        result = stats.kstest(samples[:, dim].numpy(), "norm", args=(model_mean[dim].item(), scale))
        assert result.pvalue > 1e-3, f"dimension {dim}: {result}"


def test_standard_data_sample_is_standard():
    model = _gaussian_model(5, 0.0, 1.0)

    samples = model.sample(3000, generator=torch.Generator().manual_seed(3))

    for dim in range(DATA_DIM):
        result = stats.kstest(samples[:, dim].numpy(), "norm")
        assert result.pvalue > 1e-3, f"dimension {dim}: {result}"


def test_long_chain_sample_matches_data():
    model = _gaussian_model(200, torch.tensor([2.0, -1.0]), torch.tensor([0.5, 2.0]), kind="linear")

    samples = model.sample(3000, generator=torch.Generator().manual_seed(4))

    for dim, (mean, variance) in enumerate([(2.0, 0.5), (-1.0, 2.0)]):
        result = stats.kstest(samples[:, dim].numpy(), "norm", args=(mean, math.sqrt(variance)))
        assert result.pvalue > 1e-3, f"dimension {dim}: {result}"


def _x0_cases():
    nan = torch.randn(4, DATA_DIM)
    nan[2, 1] = float("nan")
    inf = torch.randn(4, DATA_DIM)
    inf[0, 0] = float("inf")
    return {
        "nan": (nan, "contains NaN or infinite"),
        "inf": (inf, "contains NaN or infinite"),
        "vector": (torch.randn(DATA_DIM), r"must have shape \[N, 2\]"),
        "extra_dim": (torch.randn(4, DATA_DIM, 1), r"must have shape \[N, 2\]"),
        "wrong_width": (torch.randn(4, DATA_DIM + 1), r"must have shape \[N, 2\]"),
        "scalar": (torch.tensor(1.0), r"must have shape \[N, 2\]"),
        "empty": (torch.zeros(0, DATA_DIM), "0 examples"),
        "list": ([[0.0, 1.0]], "must be a torch.Tensor"),
    }


def _run_model(model, x0):
    model.model(x0)


def _run_guide(model, x0):
    model.guide(x0)


def _run_trace_elbo(model, x0):
    Trace_ELBO().loss(model.model, model.guide, x0)


def _run_vectorized_trace_elbo(model, x0):
    Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1).loss(
        model.model, model.guide, x0
    )


def _run_timestep_elbo(model, x0):
    TimestepELBO().loss(model.model, model.guide, x0)


def _run_timestep_per_example(model, x0):
    TimestepELBO().elbo_per_example(model.model, model.guide, x0)


def _run_svi_step(model, x0):
    SVI(model.model, model.guide, Adam({"lr": 1e-3}), loss=TimestepELBO()).step(x0)


def _run_bound_terms(model, x0):
    bound_terms(model, x0)


RUNNERS = {
    "model": _run_model,
    "guide": _run_guide,
    "trace_elbo": _run_trace_elbo,
    "vectorized_trace_elbo": _run_vectorized_trace_elbo,
    "timestep_elbo": _run_timestep_elbo,
    "timestep_per_example": _run_timestep_per_example,
    "svi_step": _run_svi_step,
    "bound_terms": _run_bound_terms,
}


@pytest.mark.parametrize("case", list(_x0_cases()))
@pytest.mark.parametrize("runner", list(RUNNERS))
def test_bad_x0_raises(runner, case):
    x0, message = _x0_cases()[case]
    model = _random_model(num_steps=3)

    with pytest.raises(ValueError, match=message):
        RUNNERS[runner](model, x0)


def test_guide_without_data_raises():
    model = _random_model()

    with pytest.raises(ValueError, match="needs data"):
        model.guide()


@pytest.mark.parametrize("num_samples", [None, 0, -2])
def test_model_without_count_raises(num_samples):
    model = _random_model()

    with pytest.raises(ValueError, match="num_samples"):
        model.model(num_samples=num_samples)


def test_same_name_second_model_trains():
    def build(width):
        forward = GaussianForward(BetaSchedule.from_name("cosine", 5))
        net = MLP(2, 4, 5, hidden_dim=width, num_blocks=1)
        return DiffusionModel(forward, EpsilonReverse(forward, net, (2,)), name="shared")

    x0 = torch.randn(16, 2)
    first = build(8)
    SVI(first.model, first.guide, Adam({"lr": 1e-2}), TimestepELBO()).step(x0)
    second = build(8)
    before = second.reverse.net.output.bias.detach().clone()

    SVI(second.model, second.guide, Adam({"lr": 1e-2}), TimestepELBO()).step(x0)

    assert not torch.equal(before, second.reverse.net.output.bias)
    assert not torch.equal(first.reverse.net.output.bias, second.reverse.net.output.bias)


def test_same_name_models_alternate():
    def build():
        forward = GaussianForward(BetaSchedule.from_name("cosine", 5))
        net = MLP(2, 4, 5, hidden_dim=8, num_blocks=1)
        return DiffusionModel(forward, EpsilonReverse(forward, net, (2,)), name="alternating")

    x0 = torch.randn(16, 2)
    first, second = build(), build()
    first_svi = SVI(first.model, first.guide, Adam({"lr": 1e-2}), TimestepELBO())
    second_svi = SVI(second.model, second.guide, Adam({"lr": 1e-2}), TimestepELBO())
    first_svi.step(x0)
    second_svi.step(x0)
    before = first.reverse.net.output.bias.detach().clone()

    first_svi.step(x0)

    assert not torch.equal(before, first.reverse.net.output.bias)
    store = pyro.get_param_store()
    name = "alternating.reverse$$$net.output.bias"
    assert store.get_param(name) is first.reverse.net.output.bias


def test_event_dim_mismatch_raises():
    forward = GaussianForward(BetaSchedule.from_name("cosine", 5))
    net = MLP(16, 16, 5, hidden_dim=8, num_blocks=1)

    with pytest.raises(ValueError, match="event_dim=2"):
        DiffusionModel(forward, EpsilonReverse(forward, net, (4, 4), "small"))


def test_sample_follows_model_dtype():
    forward = GaussianForward(BetaSchedule.from_name("cosine", 5))
    net = MLP(2, 4, 5, hidden_dim=8, num_blocks=1)
    diffusion = DiffusionModel(forward, EpsilonReverse(forward, net, (2,))).double()

    assert diffusion.sample(3).dtype == torch.float64
    with pytest.raises(ValueError, match="float32"):
        diffusion.model(torch.zeros(3, 2))


@pytest.mark.parametrize("name", [None, "same"], ids=["default names", "one name"])
def test_second_model_of_another_width_trains(name):
    from pyro_diffusion.optim import joint_adam

    def build(width):
        forward = GaussianForward(BetaSchedule.from_name("linear", 5))
        net = MLP(2, 4, 5, hidden_dim=width, num_blocks=1)
        return DiffusionModel(forward, EpsilonReverse(forward, net, (2,)), name=name)

    x0 = torch.randn(16, 2)
    narrow = build(8)
    SVI(narrow.model, narrow.guide, joint_adam({"lr": 1e-2}), TimestepELBO()).step(x0)
    wide = build(32)
    before = {key: p.detach().clone() for key, p in wide.named_parameters()}
    svi = SVI(wide.model, wide.guide, joint_adam({"lr": 1e-2}), TimestepELBO())
    for _ in range(3):
        assert math.isfinite(svi.step(x0))
    assert wide.reverse.net.input.weight.shape == (32, 2)
    assert not torch.equal(before["reverse.net.output.bias"], wide.reverse.net.output.bias)
    store = pyro.get_param_store()
    assert store.get_param(f"{wide._pyro_name}.reverse$$$net.input.weight") is wide.reverse.net.input.weight


def test_param_store_writer_of_the_leak_check():
    pyro.param("leak_probe", torch.ones(2))
    _random_model().model(torch.randn(4, DATA_DIM))
    assert "leak_probe" in pyro.get_param_store()


def test_param_store_reader_of_the_leak_check():
    # Runs after the writer above: the fixture in conftest.py empties the store between tests.
    assert len(pyro.get_param_store()) == 0
