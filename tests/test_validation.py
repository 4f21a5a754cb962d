"""
Every public Python entry point refuses bad input with a ``ValueError`` that
names the value and the fix. The command line's table is ``BAD_INPUTS`` in
``test_cli.py``.
"""

import pytest
import torch

import pyro
from pyro.infer import SVI

from pyro_diffusion import (
    MLP, BernoulliReverse, BetaSchedule, BinomialForward, DiffusionModel, EpsilonReverse, GaussianForward,
    ImportanceTimesteps, LearnedBetaSchedule, MultiScaleConvNet, Observation, TimestepELBO, UNet,
    UniformTimesteps, binomial_betas, condition, heldout_bound, importance_log_likelihood, joint_adam,
    product_sample, sample_strided, smc_sample,
)
from pyro_diffusion.ema import ExponentialMovingAverage
from pyro_diffusion.experiment import RunConfig

T = 10


def gaussian_model():
    forward = GaussianForward(BetaSchedule.from_name("linear", T), event_dim=1)
    net = MLP(2, 4, T, hidden_dim=8, num_blocks=1)
    return DiffusionModel(forward, EpsilonReverse(forward, net, (2,)))


def binomial_model():
    forward = BinomialForward(binomial_betas(T), event_dim=1)
    net = MLP(2, 2, T, hidden_dim=8, num_blocks=1)
    return DiffusionModel(forward, BernoulliReverse(forward, net, (2,)))


def data(*shape, **kwargs):
    return torch.randn(*(shape or (5, 2)), **kwargs)


def svi_step(x):
    model = gaussian_model()
    return SVI(model.model, model.guide, joint_adam({"lr": 1e-3}), TimestepELBO()).step(x)


def observation_on_meta():
    # The meta device plays the part of an accelerator on a machine without one.
    observation = Observation(data())
    observation.values = observation.values.to("meta")
    return observation


def nan_data():
    x = data()
    x[1, 0] = float("nan")
    return x


#: Each bad input, the call that receives it, and a fragment of the message it gets.
BAD_INPUTS = {
    # Data given to the model, the guide and SVI.
    "x0 not a tensor": (lambda: gaussian_model().model([[1.0, 2.0]]), "must be a torch.Tensor"),
    "x0 of the wrong shape": (lambda: gaussian_model().model(data(5, 3)), r"shape \[N, 2\]"),
    "x0 without the batch dimension": (lambda: gaussian_model().guide(data(2)), r"shape \[N, 2\]"),
    "x0 of integers": (lambda: gaussian_model().model(torch.ones(5, 2, dtype=torch.long)), r"x0.float\(\)"),
    "x0 of another dtype": (lambda: gaussian_model().model(data(dtype=torch.float64)), "x0.to"),
    "x0 with NaN": (lambda: gaussian_model().guide(nan_data()), "NaN or infinite"),
    "x0 with infinity": (lambda: svi_step(torch.tensor([[1.0, float("inf")]])), "NaN or infinite"),
    "x0 empty": (lambda: gaussian_model().model(data(0, 2)), "empty"),
    "x0 on another device": (lambda: svi_step(data().to("meta")), "device meta"),
    "real data for binomial diffusion": (lambda: binomial_model().model(data()), "binary data"),
    "guide without data": (lambda: gaussian_model().guide(), "needs data"),
    "model without data or count": (lambda: gaussian_model().model(), "num_samples"),
    "obs_mask not boolean": (lambda: gaussian_model().model(data(), obs_mask=torch.ones(5, 2)), "boolean"),
    "obs_mask of another shape": (
        lambda: gaussian_model().model(data(), obs_mask=torch.ones(3, dtype=torch.bool)), "does not broadcast"
    ),
    "condition on a site the model lacks": (
        lambda: condition(gaussian_model().model, {"x_99": data()}, data()), "x_99"
    ),
    # Sampling.
    "zero samples": (lambda: gaussian_model().sample(0), "num_samples"),
    "fractional samples": (lambda: gaussian_model().sample(2.5), "2.5"),
    "zero sampling steps": (lambda: sample_strided(gaussian_model(), 4, 0), "sampling_steps = 0"),
    # Schedules and kernels.
    "unknown schedule": (lambda: BetaSchedule.from_name("quadratic", T), "paper, linear, cosine, log-snr"),
    "zero diffusion steps": (lambda: BetaSchedule.from_name("linear", 0), ">= 1"),
    "beta of NaN": (lambda: BetaSchedule(torch.tensor([0.1, float("nan")])), "beta_2 = nan"),
    "beta of 1": (lambda: BetaSchedule(torch.tensor([0.1, 1.0])), "beta_2 = 1.0"),
    "learned schedule from bad betas": (lambda: LearnedBetaSchedule(torch.tensor([0.1, 1.5])), "1.5"),
    "unknown reverse variance": (
        lambda: EpsilonReverse(GaussianForward(BetaSchedule.from_name("linear", T)), MLP(2, 2, T), (2,), "medium"),
        "small, large, learned",
    ),
    "event_dim that disagrees with the kernel": (
        lambda: DiffusionModel(
            GaussianForward(BetaSchedule.from_name("linear", T), event_dim=2),
            EpsilonReverse(GaussianForward(BetaSchedule.from_name("linear", T)), MLP(2, 2, T), (2,)),
        ),
        "event_dim",
    ),
    "time step beyond T": (
        lambda: GaussianForward(BetaSchedule.from_name("linear", T)).marginal(data(), T + 1), "outside 1..10"
    ),
    "fractional time step": (
        lambda: GaussianForward(BetaSchedule.from_name("linear", T)).marginal(data(), torch.tensor(2.5)), "integers"
    ),
    # Networks.
    "MLP input of the wrong width": (lambda: MLP(2, 2, T)(data(5, 3), torch.full((5,), 2)), "2 features"),
    "MLP time step beyond its T": (lambda: MLP(2, 2, T)(data(), torch.full((5,), T + 1)), "t = 11"),
    "MLP fractional time step": (lambda: MLP(2, 2, T)(data(), torch.full((5,), 2.0)), "integer time steps"),
    "U-Net image of the wrong size": (
        lambda: UNet((1, 8, 8), 1, T, channels=8)(data(2, 49), torch.tensor([1, 2])), "flattened image"
    ),
    "U-Net time step 0": (lambda: UNet((1, 8, 8), 1, T, channels=8)(data(2, 64), torch.tensor([0, 2])), "t = 0"),
    "conv net time step beyond its T": (
        lambda: MultiScaleConvNet((1, 8, 8), 1, T, channels=4)(data(2, 64), torch.tensor([3, 40])), "t = 40"
    ),
    "U-Net image shape of two numbers": (lambda: UNet((8, 8), 1, T), "three positive integers"),
    # Training and time steps.
    "zero particles in the estimator": (lambda: TimestepELBO(num_particles=0), "num_particles"),
    "time steps drawn with T = 1": (lambda: UniformTimesteps().draw(3, 1), "T >= 2"),
    "empty history of the importance proposal": (lambda: ImportanceTimesteps(history=0), "history"),
    "uniform share outside (0, 1]": (lambda: ImportanceTimesteps(uniform_fraction=0.0), "uniform_fraction"),
    "EMA decay of 1.5": (lambda: ExponentialMovingAverage(gaussian_model(), 1.5), "1.5"),
    "per-parameter arguments for the joint optimizer": (lambda: joint_adam(lambda name: {"lr": 1.0}), "one dict"),
    # Likelihoods.
    "held-out data with NaN": (lambda: heldout_bound(gaussian_model(), nan_data()), "NaN"),
    "held-out data of integers": (
        lambda: heldout_bound(gaussian_model(), torch.ones(3, 2, dtype=torch.long)), r"x0.float\(\)"
    ),
    "zero importance samples": (lambda: importance_log_likelihood(gaussian_model(), data(), 0), "K must be"),
    # Conditioning.
    "negative observation noise": (lambda: Observation(data(), noise_scale=-1.0), "noise_scale = -1.0"),
    "observation noise below 1e-6": (lambda: Observation(data(), noise_scale=1e-20), "1e-20"),
    "observation without examples": (lambda: Observation(data(0, 2)), "no examples"),
    "observation mask of another shape": (
        lambda: Observation(data(), mask=torch.ones(3, dtype=torch.bool)), "does not broadcast"
    ),
    "observation of another event shape": (lambda: product_sample(gaussian_model(), Observation(data(5, 3))), "shape"),
    "observation on another device": (
        lambda: product_sample(gaussian_model(), observation_on_meta()), "device meta"
    ),
    "zero particles in SMC": (lambda: smc_sample(gaussian_model(), Observation(data()), 0), "num_particles"),
    "resampling threshold above 1": (
        lambda: smc_sample(gaussian_model(), Observation(data()), 4, resample_threshold=2.0), "resample_threshold"
    ),
    "conditioning a binomial model": (
        lambda: product_sample(binomial_model(), Observation(torch.ones(5, 2))), "Gaussian forward process"
    ),
    # Run configurations.
    "unknown data set": (lambda: RunConfig(dataset="mnist-xl").resolved(), "mnist-xl"),
    "unknown network": (lambda: RunConfig(dataset="digits", network="transformer").resolved(), "transformer"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gets_a_clear_error(case):
    call, message = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=message):
        call()


def test_finiteness_check_follows_pyro_validation():
    model = gaussian_model()
    with pytest.raises(ValueError, match="NaN"):
        model.guide(nan_data())
    pyro.enable_validation(False)
    # Without validation the scan of every value is skipped; shape checks stay.
    model.guide(nan_data())
    with pytest.raises(ValueError, match="shape"):
        model.guide(data(5, 3))


def test_binary_check_follows_pyro_validation():
    pyro.enable_validation(False)
    binomial_model().guide(torch.full((5, 2), 0.5))
    pyro.enable_validation(True)
    with pytest.raises(ValueError, match="binary"):
        binomial_model().guide(torch.full((5, 2), 0.5))


def test_network_range_check_follows_pyro_validation():
    net = MLP(2, 2, T)
    pyro.enable_validation(False)
    assert net(data(), torch.full((5,), T + 1)).shape == (5, 2)
    pyro.enable_validation(True)
    with pytest.raises(ValueError, match="t = 11"):
        net(data(), torch.full((5,), T + 1))


def test_networks_take_an_integer_time_step():
    x = data(2, 64)
    for net in (MLP(64, 64, T), UNet((1, 8, 8), 1, T, channels=8), MultiScaleConvNet((1, 8, 8), 1, T, channels=4)):
        net.eval()
        assert torch.equal(net(x, 3), net(x, torch.tensor([3, 3])))


def test_refused_input_leaves_parameters_unchanged():
    model = gaussian_model()
    svi = SVI(model.model, model.guide, joint_adam({"lr": 0.1}), TimestepELBO())
    svi.step(data())
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with pytest.raises(ValueError, match="NaN"):
        svi.step(nan_data())
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name


#: Arguments of the wrong shape or type, with the message each gets.
MORE_BAD_INPUTS = {
    "t of another length than the batch": (lambda: MLP(2, 2, T)(data(5, 2), torch.full((3,), 2)), r"shape \[5\]"),
    "t with a trailing dimension": (lambda: MLP(2, 2, T)(data(5, 2), torch.full((5, 1), 2)), r"shape \[5, 1\]"),
    "held-out data as a NumPy array": (lambda: heldout_bound(gaussian_model(), data().numpy()), "torch.Tensor"),
    "a string as the time-step proposal": (lambda: TimestepELBO(sampler="uniform"), "UniformTimesteps"),
    "observation noise per coordinate": (
        lambda: Observation(data(), noise_scale=torch.full((5, 1), 0.3)), "one number"
    ),
    "observation noise as a string": (lambda: Observation(data(), noise_scale="0.1"), "one number"),
    "data and a different sample count": (lambda: gaussian_model().model(data(), num_samples=3), "not both"),
    "an integer as the generator": (lambda: gaussian_model().sample(2, generator=5), "torch.Generator"),
}


@pytest.mark.parametrize("case", sorted(MORE_BAD_INPUTS))
def test_more_bad_input_gets_a_clear_error(case):
    call, message = MORE_BAD_INPUTS[case]
    with pytest.raises(ValueError, match=message):
        call()


def test_observation_noise_scalar_tensor():
    assert Observation(data(), noise_scale=torch.tensor(0.3)).noise_scale == pytest.approx(0.3)
