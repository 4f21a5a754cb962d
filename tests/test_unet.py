import math
import re

import pytest
import torch
from pyro.infer import SVI
from pyro.optim import Adam

from pyro_diffusion import TimestepELBO
from pyro_diffusion.forward import GaussianForward
from pyro_diffusion.model import DiffusionModel
from pyro_diffusion.nets import UNet
from pyro_diffusion.reverse import EpsilonReverse
from pyro_diffusion.schedules import BetaSchedule

NUM_STEPS = 20


def _net(image_shape=(1, 8, 8), num_outputs=2, randomize=True, seed=0, **kwargs):
    """Build a small net. With ``randomize``, replace its zero readout by a random one."""
    torch.manual_seed(seed)
    kwargs.setdefault("channels", 8)
    net = UNet(image_shape, num_outputs, NUM_STEPS, **kwargs)
    if randomize:
        torch.nn.init.normal_(net.readout.weight, std=0.1)
        torch.nn.init.normal_(net.readout.bias, std=0.1)
    return net


def _steps(num_examples, seed=2):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, NUM_STEPS + 1, (num_examples,), generator=generator)


class _Constant(torch.nn.Module):
    """A stand-in for the time embedding that gives every step the same features."""

    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, t):
        return self.value.expand(t.shape[0], -1)


@pytest.mark.parametrize(
    "image_shape, channel_multipliers",
    [
        ((1, 8, 8), (1, 2)),
        ((1, 28, 28), (1, 2)),
        ((3, 32, 32), (1, 2, 2)),
        ((1, 5, 7), (1, 2, 2)),
        ((2, 1, 9), (1, 2)),
        ((1, 1, 1), (1,)),
    ],
)
@pytest.mark.parametrize("num_outputs", [1, 2])
def test_output_shape(image_shape, channel_multipliers, num_outputs):
    net = _net(image_shape, num_outputs, channel_multipliers=channel_multipliers)
    dim = math.prod(image_shape)
    x = torch.randn(3, dim)

    out = net(x, _steps(3))

    assert out.shape == (3, num_outputs * dim)
    assert torch.isfinite(out).all()


def test_fresh_net_outputs_zero():
    net = _net(randomize=False)
    x = torch.randn(5, 64)

    out = net(x, _steps(5))

    assert torch.equal(out, torch.zeros(5, 128))


def test_output_layout_follows_readout():
    # Readout channel k * C + c contains output k for image channel c, so with
    # zero weights and bias 10 * k + c every element of that image is 10 * k + c.
    image_shape = (2, 4, 6)
    net = _net(image_shape, num_outputs=3)
    with torch.no_grad():
        net.readout.weight.zero_()
        for k in range(3):
            for c in range(2):
                net.readout.bias[2 * k + c] = 10.0 * k + c

    out = net(torch.randn(1, 48), torch.tensor([3]))

    expected = torch.tensor([10.0 * k + c for k in range(3) for c in range(2)])
    assert torch.equal(out, expected.repeat_interleave(24).reshape(1, -1))
    # Output k for element d sits at index k * D + d.
    assert out[0, 2 * 48 + 30].item() == 21.0


def test_output_is_readout_flattened():
    net = _net((2, 5, 7), num_outputs=2)
    captured = []
    net.readout.register_forward_hook(lambda module, inputs, output: captured.append(output))

    out = net(torch.randn(3, 70), _steps(3))

    assert captured[0].shape == (3, 4, 5, 7)
    assert torch.equal(out, captured[0].reshape(3, -1))


def test_input_is_unflattened_in_chw_order():
    net = _net((2, 5, 7))
    captured = []
    net.input_conv.register_forward_pre_hook(lambda module, inputs: captured.append(inputs[0]))
    images = torch.randn(3, 2, 5, 7)

    net(images.reshape(3, -1), _steps(3))

    assert torch.equal(captured[0], images)


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
    one_step = net(x, torch.tensor([7]))
    per_example = net(x, torch.full((3,), 7))

    assert torch.equal(shared, per_example)
    assert torch.equal(one_step, per_example)


@pytest.mark.parametrize("late_step", [2, NUM_STEPS])
def test_output_changes_with_step(late_step):
    net = _net()
    x = torch.randn(1, 64).expand(2, -1)

    out = net(x, torch.tensor([1, late_step]))

    assert not torch.allclose(out[0], out[1])


def test_time_enters_only_through_embedding():
    net = _net()
    net.time_embedding = _Constant(torch.randn(1, 4 * 8))
    x = torch.randn(3, 64)

    early = net(x, torch.full((3,), 1))
    late = net(x, torch.full((3,), NUM_STEPS))

    assert torch.equal(early, late)


@pytest.mark.parametrize("attention", [False, True])
def test_backward_reaches_every_parameter(attention):
    net = _net((1, 5, 7), attention=attention, channel_multipliers=(1, 2, 2), num_res_blocks=2)
    x = torch.randn(4, 35)

    net(x, _steps(4)).square().sum().backward()

    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().max() > 0, name


def test_attention_changes_output():
    plain = _net(attention=False)
    with_attention = _net(attention=True)
    x = torch.randn(2, 64)
    t = _steps(2)

    assert with_attention.middle_attention is not None
    assert plain.middle_attention is None
    assert not torch.allclose(plain(x, t), with_attention(x, t))


def test_dropout_is_active_in_training_only():
    net = _net(dropout=0.5)
    x = torch.randn(2, 64)
    t = _steps(2)

    first, second = net(x, t), net(x, t)
    net.eval()
    first_eval, second_eval = net(x, t), net(x, t)

    assert not torch.equal(first, second)
    assert torch.equal(first_eval, second_eval)


def test_every_level_keeps_uneven_sizes():
    # A side of n pixels becomes ceil(n / 2) at the next level: 5 x 7, then
    # 3 x 4, then 2 x 2. The up path crops back to the same sizes.
    net = _net((1, 5, 7), channel_multipliers=(1, 2, 2))
    down_sizes = []
    for blocks in net.down_blocks:
        blocks[0].register_forward_hook(
            lambda module, inputs, output: down_sizes.append(output.shape[-2:])
        )
    up_sizes = []
    for blocks in net.up_blocks:
        blocks[-1].register_forward_hook(
            lambda module, inputs, output: up_sizes.append(output.shape[-2:])
        )

    net(torch.randn(2, 35), _steps(2))

    assert down_sizes == [(5, 7), (3, 4), (2, 2)]
    assert up_sizes == [(2, 2), (3, 4), (5, 7)]


@pytest.mark.parametrize(
    "image_shape, max_levels",
    [((1, 8, 5), 4), ((1, 5, 7), 4), ((1, 9, 2), 5), ((1, 28, 28), 6), ((2, 1, 1), 1)],
)
def test_too_many_levels_raises(image_shape, max_levels):
    # Halving with rounding up reaches one pixel after 3 steps for sides of
    # 5 to 8 (8, 4, 2, 1 and 7, 4, 2, 1), after 4 for 9 and after 5 for 28.
    # The last level allowed is the first that is 1 x 1.
    net = _net(image_shape, channel_multipliers=(1,) * max_levels)
    dim = math.prod(image_shape)
    out = net(torch.randn(2, dim), _steps(2))
    expected = rf"{max_levels + 1} levels .*so give at most {max_levels} channel multipliers"

    assert out.shape == (2, 2 * dim)
    with pytest.raises(ValueError, match=expected):
        UNet(image_shape, 2, NUM_STEPS, channel_multipliers=(1,) * (max_levels + 1))


def _diffusion_model(image_shape):
    dim = math.prod(image_shape)
    forward = GaussianForward(BetaSchedule.from_name("paper", NUM_STEPS), event_dim=1)
    net = UNet(image_shape, 2, NUM_STEPS, channels=8)
    reverse = EpsilonReverse(forward, net, (dim,), "learned")
    return DiffusionModel(forward, reverse)


@pytest.mark.parametrize("image_shape", [(1, 8, 8), (1, 5, 7)])
def test_svi_steps_train_every_parameter(image_shape):
    torch.manual_seed(0)
    model = _diffusion_model(image_shape)
    x0 = torch.randn((8,) + image_shape).reshape(8, -1)
    before = {name: p.detach().clone() for name, p in model.reverse.net.named_parameters()}
    svi = SVI(model.model, model.guide, Adam({"lr": 1e-2}), loss=TimestepELBO())

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
    with pytest.raises(ValueError, match="invalid image_shape .*three positive integers"):
        UNet(image_shape, 2, NUM_STEPS)


@pytest.mark.parametrize(
    "name, value",
    [
        ("num_outputs", 0),
        ("num_steps", 0),
        ("channels", 0),
        ("channels", 2.5),
        ("num_res_blocks", 0),
        ("num_res_blocks", True),
    ],
)
def test_bad_size_argument_raises(name, value):
    arguments = {"num_outputs": 2, "num_steps": NUM_STEPS, name: value}

    with pytest.raises(ValueError, match=f"invalid {name} .*>= 1, got {value}"):
        UNet((1, 16, 16), **arguments)


@pytest.mark.parametrize("multipliers", [(), (1, 0), (1, 2.0), (1, True), 2, None])
def test_bad_channel_multipliers_raises(multipliers):
    with pytest.raises(ValueError, match="invalid channel_multipliers .*such as \\(1, 2\\)"):
        UNet((1, 16, 16), 2, NUM_STEPS, channel_multipliers=multipliers)


@pytest.mark.parametrize("dropout", [-0.1, 1.0, "0.1", None])
def test_bad_dropout_raises(dropout):
    with pytest.raises(ValueError, match=f"invalid dropout .*got {re.escape(repr(dropout))}"):
        UNet((1, 16, 16), 2, NUM_STEPS, dropout=dropout)


def test_wrong_feature_count_raises():
    net = UNet((1, 16, 16), 2, NUM_STEPS, channels=8)
    expected = r"\(1, 16, 16\), 256 values per example, but got input of shape \(8, 100\)"

    with pytest.raises(ValueError, match=expected):
        net(torch.randn(8, 100), _steps(8))


def test_image_shaped_input_raises():
    net = UNet((1, 16, 16), 2, NUM_STEPS, channels=8)

    with pytest.raises(ValueError, match=r"shape \(8, 1, 16, 16\).*x.reshape\(N, -1\)"):
        net(torch.randn(8, 1, 16, 16), _steps(8))


@pytest.mark.parametrize("t_shape", [(5,), (8, 1)])
def test_wrong_step_shape_raises(t_shape):
    net = UNet((1, 16, 16), 2, NUM_STEPS, channels=8)

    with pytest.raises(ValueError, match="one time step per example"):
        net(torch.randn(8, 256), torch.ones(t_shape, dtype=torch.long))
