import math

import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from pyro_diffusion.elbo import TimestepELBO
from pyro_diffusion.forward import GaussianForward
from pyro_diffusion.model import DiffusionModel
from pyro_diffusion.nets import MultiScaleConvNet
from pyro_diffusion.reverse import EpsilonReverse, PaperReverse
from pyro_diffusion.schedules import BetaSchedule

NUM_STEPS = 20


def _net(image_shape=(1, 8, 8), num_outputs=2, randomize=True, seed=0, **kwargs):
    """Build a small net. With ``randomize``, replace its zero readout by a random one."""
    torch.manual_seed(seed)
    kwargs.setdefault("channels", 8)
    kwargs.setdefault("num_bumps", 4)
    net = MultiScaleConvNet(image_shape, num_outputs, NUM_STEPS, **kwargs)
    if randomize:
        torch.nn.init.normal_(net.readout.weight, std=0.5)
        torch.nn.init.normal_(net.readout.bias, std=0.5)
    return net


def _images(num_examples, image_shape, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((num_examples,) + tuple(image_shape), generator=generator)


def _steps(num_examples, seed=2):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, NUM_STEPS + 1, (num_examples,), generator=generator)


def _run(net, images, t):
    """Run ``net`` on ``[N, C, H, W]`` images and return ``[N, K, C, H, W]``."""
    out = net(images.reshape(images.shape[0], -1), t)
    return out.reshape((images.shape[0], net.num_outputs) + tuple(images.shape[1:]))


class _FixedWeights(torch.nn.Module):
    """A stand-in for the bumps that gives every time step the same weights."""

    def __init__(self, weights):
        super().__init__()
        self.num_bumps = weights.shape[0]
        self.weights = weights

    def forward(self, t):
        return self.weights.expand(t.shape + self.weights.shape)


class _Constant(torch.nn.Module):
    """A stand-in for the conv body that gives every input the same features."""

    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, h):
        return self.value.expand(h.shape[0], -1, -1, -1)


@pytest.mark.parametrize("image_shape", [(1, 8, 8), (3, 8, 12), (2, 5, 7), (1, 1, 9)])
@pytest.mark.parametrize("num_outputs", [1, 2])
def test_output_shape(image_shape, num_outputs):
    net = _net(image_shape, num_outputs)
    dim = math.prod(image_shape)
    x = torch.randn(4, dim)

    out = net(x, _steps(4))

    assert out.shape == (4, num_outputs * dim)
    assert torch.isfinite(out).all()


def test_fresh_net_outputs_zero():
    net = _net(randomize=False)
    x = torch.randn(5, 64)

    out = net(x, _steps(5))

    assert torch.equal(out, torch.zeros(5, 128))


def test_output_layout_follows_readout():
    # With the conv body's features replaced by a known pattern, set the
    # readout by hand. Bump j of output k for channel c copies feature c and
    # adds 10 * k + c + 100 * j. The bump weights are fixed at (0.75, 0.25).
    image_shape = (2, 4, 6)
    net = _net(image_shape, num_outputs=3, num_bumps=2, dense_layers=0, channels=2)
    marker = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(1, 2, 4, 6)
    net.conv_layers = torch.nn.ModuleList([_Constant(marker)])
    net.bumps = _FixedWeights(torch.tensor([0.75, 0.25]))
    with torch.no_grad():
        net.readout.weight.zero_()
        for j in range(2):
            for k in range(3):
                for c in range(2):
                    channel = 6 * j + 2 * k + c
                    net.readout.weight[channel, c] = 1.0
                    net.readout.bias[channel] = 10.0 * k + c + 100.0 * j

    out = net(torch.zeros(1, 48), torch.tensor([3]))

    channel_offset = torch.tensor([0.0, 1.0]).view(2, 1, 1)
    expected = torch.stack([marker[0] + 10.0 * k + channel_offset + 25.0 for k in range(3)])
    assert torch.equal(out, expected.reshape(1, -1))
    # Output k for element d sits at index k * D + d.
    assert out[0, 2 * 48 + 30].item() == marker.flatten()[30].item() + 21.0 + 25.0


def test_output_depends_on_input():
    net = _net()
    x = torch.randn(2, 64)
    t = torch.tensor([5, 5])

    out = net(x, t)

    assert not torch.allclose(out[0], out[1])


def test_examples_are_independent():
    net = _net()
    x = torch.randn(6, 64)
    t = _steps(6)

    batched = net(x, t)
    single = torch.cat([net(x[i : i + 1], t[i : i + 1]) for i in range(6)])

    assert torch.allclose(batched, single, atol=1e-5)


def test_scalar_step_broadcasts():
    net = _net()
    x = torch.randn(3, 64)

    shared = net(x, torch.tensor(7))
    per_example = net(x, torch.full((3,), 7))

    assert torch.equal(shared, per_example)


def test_time_enters_only_through_bumps():
    net = _net(num_bumps=4)
    x = torch.randn(3, 64)
    fixed = torch.tensor([0.1, 0.2, 0.3, 0.4])
    net.bumps = _FixedWeights(fixed)

    early = net(x, torch.full((3,), 1))
    late = net(x, torch.full((3,), NUM_STEPS))

    assert torch.equal(early, late)


def test_output_mixes_bump_readouts():
    net = _net(num_bumps=4)
    x = torch.randn(3, 64)
    t = torch.tensor([1, 9, 20])
    weights = net.bumps(t)
    # The output for one-hot bump weights is the j-th readout on its own.
    per_bump = []
    for j in range(4):
        net_j = _net(num_bumps=4)
        net_j.bumps = _FixedWeights(torch.nn.functional.one_hot(torch.tensor(j), 4).float())
        per_bump.append(net_j(x, t))

    out = net(x, t)

    expected = sum(weights[:, j : j + 1] * per_bump[j] for j in range(4))
    assert torch.allclose(out, expected, atol=1e-5)
    assert not torch.allclose(per_bump[0], per_bump[3])


def test_output_changes_with_step():
    net = _net(num_bumps=4)
    x = torch.randn(1, 64).expand(2, -1)

    out = net(x, torch.tensor([1, NUM_STEPS]))

    assert not torch.allclose(out[0], out[1])


@pytest.mark.parametrize("axis", [2, 3])
def test_shift_equivariance_away_from_borders(axis):
    # With 3 scales the coarsest grid has period 4. A shift by 4 along one
    # axis keeps the grid aligned, so outputs far enough from the left and
    # right ends of that axis shift with the image. The other axis is
    # unchanged, so its borders affect both runs alike.
    num_scales, num_conv_layers = 3, 2
    reach = num_conv_layers * (2**num_scales - 1)
    shift = 2 ** (num_scales - 1)
    image_shape = (2, 48, 10) if axis == 2 else (2, 10, 48)
    net = _net(image_shape, num_scales=num_scales, num_conv_layers=num_conv_layers)
    images = _images(2, image_shape)
    t = torch.tensor([3, 17])

    out = _run(net, images, t)
    shifted = _run(net, torch.roll(images, shift, dims=axis), t)

    # Axis `axis` of the images is axis `axis + 1` of the outputs.
    start, stop = reach + shift, 48 - reach
    expected = torch.roll(out, shift, dims=axis + 1).narrow(axis + 1, start, stop - start)
    actual = shifted.narrow(axis + 1, start, stop - start)
    assert torch.allclose(actual, expected, atol=1e-5)


def test_shift_off_grid_changes_output():
    # A one-pixel shift moves the image against the coarse pooling grid, so
    # the coarse scales see different averages and the outputs do not shift.
    image_shape = (1, 10, 48)
    net = _net(image_shape, num_scales=3)
    images = _images(1, image_shape)
    t = torch.tensor([5])

    out = _run(net, images, t)
    shifted = _run(net, torch.roll(images, 1, dims=3), t)

    moved = torch.roll(out, 1, dims=4)
    assert not torch.allclose(shifted[..., 16:32], moved[..., 16:32], atol=1e-5)


def test_pixel_change_stays_in_receptive_field():
    # Each multi-scale layer reaches 2**num_scales - 1 pixels in each
    # direction, through the 3x3 convolution at the coarsest scale.
    num_scales, num_conv_layers = 3, 2
    reach = num_conv_layers * (2**num_scales - 1)
    image_shape = (1, 40, 40)
    net = _net(image_shape, num_scales=num_scales, num_conv_layers=num_conv_layers)
    images = _images(1, image_shape)
    changed = images.clone()
    changed[0, 0, 20, 20] += 3.0
    t = torch.tensor([8])

    difference = (_run(net, changed, t) - _run(net, images, t)).abs()[0, :, 0]

    rows = torch.arange(40).view(40, 1)
    cols = torch.arange(40).view(1, 40)
    distance = torch.maximum((rows - 20).abs(), (cols - 20).abs())
    assert difference[:, distance > reach].max() == 0.0
    # Pixels 8 away are beyond two 3x3 convolutions at full resolution, so a
    # change there comes from the pooled scales.
    assert difference[:, distance == 8].max() > 1e-4


def test_uneven_image_size_runs():
    # 13 x 6 is not divisible by 4: the last pooling windows are partial and
    # the upsampled maps are cropped.
    net = _net((1, 13, 6), num_scales=3)
    x = torch.randn(2, 78)

    out = net(x, _steps(2))

    assert out.shape == (2, 156)
    assert torch.isfinite(out).all()


def _diffusion_model(kernel, image_shape):
    dim = math.prod(image_shape)
    forward = GaussianForward(BetaSchedule.from_name("paper", NUM_STEPS), event_dim=1)
    if kernel == "paper":
        net = MultiScaleConvNet(image_shape, 2, NUM_STEPS, channels=8, num_bumps=4)
        reverse = PaperReverse(forward, net, (dim,))
    else:
        net = MultiScaleConvNet(image_shape, 1, NUM_STEPS, channels=8, num_bumps=4)
        reverse = EpsilonReverse(forward, net, (dim,), "small")
    return DiffusionModel(forward, reverse)


@pytest.mark.parametrize("loss", [TimestepELBO, Trace_ELBO])
@pytest.mark.parametrize("kernel", ["paper", "epsilon"])
def test_svi_steps_train_every_parameter(kernel, loss):
    torch.manual_seed(0)
    image_shape = (1, 8, 8)
    model = _diffusion_model(kernel, image_shape)
    x0 = _images(8, image_shape).reshape(8, -1)
    before = {name: p.detach().clone() for name, p in model.reverse.net.named_parameters()}
    svi = SVI(model.model, model.guide, Adam({"lr": 1e-2}), loss=loss())

    # The first step moves only the readout, because the body's gradients
    # pass through the zero readout weights and vanish. The second step
    # reaches the body.
    losses = [svi.step(x0), svi.step(x0)]

    assert all(math.isfinite(value) for value in losses)
    for name, p in model.reverse.net.named_parameters():
        assert not torch.equal(p, before[name]), name


@pytest.mark.parametrize(
    "image_shape",
    [(16, 16), (1, 16, 16, 1), (1, 0, 16), (1, -2, 16), (1, 16.0, 16), (1, True, 16), 16, None],
)
def test_bad_image_shape_raises(image_shape):
    with pytest.raises(ValueError, match="three positive integers"):
        MultiScaleConvNet(image_shape, 2, NUM_STEPS)


@pytest.mark.parametrize(
    "name, value",
    [
        ("num_scales", 0),
        ("channels", 0),
        ("num_conv_layers", 0),
        ("dense_layers", -1),
        ("dense_channels", 0),
        ("num_bumps", 0),
        ("channels", 2.5),
    ],
)
def test_bad_size_argument_raises(name, value):
    with pytest.raises(ValueError, match=f"invalid {name} .*>= .*got {value}"):
        MultiScaleConvNet((1, 16, 16), 2, NUM_STEPS, **{name: value})


@pytest.mark.parametrize("num_outputs, num_steps", [(0, NUM_STEPS), (2, 0)])
def test_bad_count_raises(num_outputs, num_steps):
    with pytest.raises(ValueError, match=">= 1"):
        MultiScaleConvNet((1, 16, 16), num_outputs, num_steps)


@pytest.mark.parametrize("dropout", [-0.1, 1.0])
def test_bad_dropout_raises(dropout):
    with pytest.raises(ValueError, match="dropout"):
        MultiScaleConvNet((1, 16, 16), 2, NUM_STEPS, dropout=dropout)


def test_too_many_scales_raises():
    # 2**4 = 16 is the largest pooling factor an 8 x 16 image allows.
    MultiScaleConvNet((1, 8, 16), 2, NUM_STEPS, num_scales=5)

    with pytest.raises(ValueError, match="use num_scales <= 5"):
        MultiScaleConvNet((1, 8, 16), 2, NUM_STEPS, num_scales=6)


def test_wrong_feature_count_raises():
    net = MultiScaleConvNet((1, 16, 16), 2, NUM_STEPS)
    expected = r"\(1, 16, 16\), 256 values per example, but got input of shape \(8, 100\)"

    with pytest.raises(ValueError, match=expected):
        net(torch.randn(8, 100), _steps(8))


def test_image_shaped_input_raises():
    net = MultiScaleConvNet((1, 16, 16), 2, NUM_STEPS)

    with pytest.raises(ValueError, match=r"shape \(8, 1, 16, 16\).*x.reshape\(N, -1\)"):
        net(torch.randn(8, 1, 16, 16), _steps(8))


@pytest.mark.parametrize("t_shape", [(5,), (8, 1)])
def test_wrong_step_shape_raises(t_shape):
    net = MultiScaleConvNet((1, 16, 16), 2, NUM_STEPS)

    with pytest.raises(ValueError, match="one time step per example"):
        net(torch.randn(8, 256), torch.ones(t_shape, dtype=torch.long))
