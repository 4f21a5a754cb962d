import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyro_diffusion.schedules import BetaSchedule, make_betas

KINDS = ["paper", "linear", "cosine"]


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(KINDS), num_steps=st.integers(min_value=1, max_value=2000))
def test_betas_inside_unit_interval(kind, num_steps):
    betas = make_betas(kind, num_steps)

    assert betas.shape == (num_steps,)
    assert betas.dtype == torch.float64
    assert (betas > 0).all()
    assert (betas < 1).all()


@pytest.mark.parametrize("kind", KINDS)
def test_buffers_have_t_plus_one_rows(kind):
    schedule = BetaSchedule.from_name(kind, 7)

    assert schedule.num_steps == 7
    for name, buffer in schedule.named_buffers():
        assert buffer.shape == (8,), name


@pytest.mark.parametrize("num_steps", [0, -3, 2.5, 10.0, "10", True, None])
def test_bad_num_steps_raises(num_steps):
    with pytest.raises(ValueError, match="got " + repr(num_steps).replace(".", r"\.")):
        make_betas("paper", num_steps)


@pytest.mark.parametrize(
    "betas, shown",
    [
        ([0.1, 1.5], "1.5"),
        ([0.0, 0.2], "0.0"),
        ([0.3, 1.0], "1.0"),
        ([0.2, -0.1], "-0.1"),
        ([0.2, float("nan")], "nan"),
    ],
)
def test_beta_outside_unit_interval_raises(betas, shown):
    with pytest.raises(ValueError, match=f"= {shown}"):
        BetaSchedule(torch.tensor(betas, dtype=torch.float64))


def test_unknown_schedule_name_raises():
    with pytest.raises(ValueError, match="'quadratic'"):
        make_betas("quadratic", 10)


def test_beta_error_names_step():
    with pytest.raises(ValueError, match="beta_3"):
        BetaSchedule(torch.tensor([0.1, 0.2, 2.0]))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num_steps", [1, 2, 10, 1000])
@pytest.mark.parametrize("cast, rel", [("half", 1e-2), ("float", 1e-6)])
def test_low_precision_keeps_noise_variance(kind, num_steps, cast, rel):
    schedule = BetaSchedule.from_name(kind, num_steps)
    exact = schedule.one_minus_alphas_bar[1:].clone()

    rounded = getattr(schedule, cast)().one_minus_alphas_bar[1:]

    assert (rounded > 0).all()
    torch.testing.assert_close(rounded.double(), exact, rtol=rel, atol=0.0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num_steps", [1, 2, 50])
def test_posterior_variance_zero_at_first_step(kind, num_steps):
    schedule = BetaSchedule.from_name(kind, num_steps)

    assert schedule.posterior_variance[1].item() == 0.0
    assert (schedule.posterior_variance[2:] > 0).all()


@pytest.mark.parametrize("kind", KINDS)
def test_alphas_bar_is_cumulative_product(kind):
    betas = make_betas(kind, 30)
    schedule = BetaSchedule(betas)

    expected = torch.cumprod(1 - betas, 0)
    torch.testing.assert_close(schedule.alphas_bar[1:], expected, rtol=1e-12, atol=0.0)
    torch.testing.assert_close(
        schedule.one_minus_alphas_bar[1:], 1 - expected, rtol=1e-9, atol=0.0
    )


def test_paper_alpha_bar_at_last_step():
    num_steps = 20
    schedule = BetaSchedule.from_name("paper", num_steps, beta_1=1e-2)

    # prod_{s=2}^{T} (1 - beta_s) = 1 / T, so alpha_bar_T = (1 - beta_1) / T.
    expected = (1 - 1e-2) / num_steps
    assert schedule.alphas_bar[num_steps].item() == pytest.approx(expected, rel=1e-12)


def test_tiny_beta_noise_variance_exact():
    schedule = BetaSchedule(torch.tensor([1e-12, 1e-10, 0.5], dtype=torch.float64))

    # 1 - alpha_bar_t computed as a difference would keep only about four
    # significant digits here, because alpha_bar_t rounds to within 1e-16 of one.
    assert schedule.one_minus_alphas_bar[1].item() == pytest.approx(1e-12, rel=1e-12, abs=0.0)
    assert schedule.one_minus_alphas_bar[2].item() == pytest.approx(1e-12 + 1e-10, rel=1e-12, abs=0.0)
    assert schedule.posterior_variance[2].item() == pytest.approx(1e-10 * 1e-12 / (1e-12 + 1e-10), rel=1e-9, abs=0.0)
