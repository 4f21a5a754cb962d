import math

import pytest
import torch

from pyro_diffusion.exact import GaussianDataReverse, LinearGaussianReverse, closed_form_terms
from pyro_diffusion.forward import GaussianForward
from pyro_diffusion.likelihood import NULL_BITS_PER_DIM, bound_terms, heldout_bound, nats_to_bits
from pyro_diffusion.model import DiffusionModel
from pyro_diffusion.nets import MLP
from pyro_diffusion.reverse import EpsilonReverse
from pyro_diffusion.schedules import BetaSchedule

DATA_DIM = 3
NUM_STEPS = 6
MEAN = torch.tensor([1.0, -2.0, 0.5])
VARIANCE = torch.tensor([0.5, 2.0, 1.0])


def _model(perturb=False, kind="cosine"):
    forward = GaussianForward(BetaSchedule.from_name(kind, NUM_STEPS))
    reverse = GaussianDataReverse(forward, MEAN, VARIANCE, (DATA_DIM,))
    if perturb:
        reverse = LinearGaussianReverse(
            forward,
            reverse.loc_coef * 0.9,
            reverse.loc_offset - 0.3,
            reverse.log_variance - 0.2,
            (DATA_DIM,),
        )
    return DiffusionModel(forward, reverse)


def _closed_form_terms(model, x0):
    reverse = model.reverse
    return closed_form_terms(
        model.forward_process, reverse.loc_coef, reverse.loc_offset, reverse.log_variance, x0
    )


def _repeated_terms(model, x0, num_copies):
    """Evaluate ``bound_terms`` on ``num_copies`` copies of ``x0``, copies along dimension 0."""
    terms = bound_terms(model, x0.repeat(num_copies, 1), torch.Generator().manual_seed(5))
    num_examples = x0.shape[0]
    return (
        terms.prior.reshape(num_copies, num_examples),
        terms.diffusion.reshape(num_copies, num_examples, NUM_STEPS - 1),
        terms.decoder.reshape(num_copies, num_examples),
        terms.elbo().reshape(num_copies, num_examples),
    )


def _assert_mean_within(draws, expected, num_stderr=4.0):
    """Check that the mean over dimension 0 is within ``num_stderr`` standard errors."""
    mean = draws.double().mean(0)
    stderr = draws.double().std(0) / math.sqrt(draws.shape[0])
    assert ((mean - expected).abs() <= num_stderr * stderr).all(), (mean, expected, stderr)


@pytest.mark.parametrize("perturb", [False, True])
def test_bound_mean_matches_closed_form(perturb):
    model = _model(perturb)
    x0 = MEAN + VARIANCE.sqrt() * torch.randn(5, DATA_DIM)

    _, _, _, elbo = _repeated_terms(model, x0, num_copies=4000)

    _assert_mean_within(elbo, _closed_form_terms(model, x0).elbo())


@pytest.mark.parametrize("perturb", [False, True])
def test_diffusion_terms_match_closed_form(perturb):
    model = _model(perturb)
    x0 = MEAN + VARIANCE.sqrt() * torch.randn(5, DATA_DIM)

    _, diffusion, _, _ = _repeated_terms(model, x0, num_copies=4000)

    _assert_mean_within(diffusion, _closed_form_terms(model, x0).diffusion)


@pytest.mark.parametrize("perturb", [False, True])
def test_decoder_term_matches_closed_form(perturb):
    model = _model(perturb)
    x0 = MEAN + VARIANCE.sqrt() * torch.randn(5, DATA_DIM)

    _, _, decoder, _ = _repeated_terms(model, x0, num_copies=4000)

    _assert_mean_within(decoder, _closed_form_terms(model, x0).decoder)


def test_prior_term_exact():
    model = _model()
    x0 = MEAN + VARIANCE.sqrt() * torch.randn(5, DATA_DIM)

    terms = bound_terms(model, x0)

    expected = _closed_form_terms(model, x0).prior
    torch.testing.assert_close(terms.prior.double(), expected, rtol=1e-5, atol=1e-6)


def test_terms_shapes():
    model = _model()
    x0 = torch.randn(7, DATA_DIM)

    terms = bound_terms(model, x0)

    assert terms.prior.shape == (7,)
    assert terms.diffusion.shape == (7, NUM_STEPS - 1)
    assert terms.decoder.shape == (7,)
    assert terms.elbo().shape == (7,)


def test_elbo_combines_terms():
    model = _model(perturb=True)
    x0 = torch.randn(7, DATA_DIM)

    terms = bound_terms(model, x0)

    expected = terms.decoder - terms.prior - terms.diffusion.sum(-1)
    torch.testing.assert_close(terms.elbo(), expected)


def test_terms_reproducible_with_generator():
    model = _model(perturb=True)
    x0 = torch.randn(4, DATA_DIM)

    first = bound_terms(model, x0, torch.Generator().manual_seed(9)).elbo()
    second = bound_terms(model, x0, torch.Generator().manual_seed(9)).elbo()

    assert torch.equal(first, second)


def test_null_bits_per_dim_value():
    expected = -0.5 * math.log2(2 * math.pi * math.e)

    assert NULL_BITS_PER_DIM == pytest.approx(expected, rel=1e-15)
    assert NULL_BITS_PER_DIM == pytest.approx(-2.047, abs=5e-4)


def test_nats_to_bits_divides_by_ln2():
    assert nats_to_bits(math.log(8.0)) == pytest.approx(3.0, rel=1e-15)


def _heldout(model, x0, batch_size=500):
    return heldout_bound(model, x0, batch_size=batch_size, generator=torch.Generator().manual_seed(11))


def test_heldout_bits_are_nats_over_ln2():
    model = _model(perturb=True)
    x0 = MEAN + VARIANCE.sqrt() * torch.randn(20, DATA_DIM)

    result = _heldout(model, x0)

    nats = bound_terms(model, x0, torch.Generator().manual_seed(11)).elbo()
    torch.testing.assert_close(result["per_example_bits"], nats / math.log(2.0))
    assert result["elbo_bits"] == pytest.approx(nats.mean().item() / math.log(2.0), rel=1e-6)


def test_heldout_null_difference():
    model = _model()
    x0 = MEAN + VARIANCE.sqrt() * torch.randn(20, DATA_DIM)

    result = _heldout(model, x0)

    assert result["l_null_bits"] == pytest.approx(DATA_DIM * NULL_BITS_PER_DIM, rel=1e-15)
    expected = result["elbo_bits"] + 0.5 * math.log2(2 * math.pi * math.e) * DATA_DIM
    assert result["k_minus_l_null_bits"] == pytest.approx(expected, rel=1e-12)
    assert result["k_minus_l_null_bits"] == pytest.approx(result["elbo_bits"] + 2.047 * DATA_DIM, abs=2e-3)


def test_heldout_summaries_consistent():
    model = _model(perturb=True)
    x0 = MEAN + VARIANCE.sqrt() * torch.randn(20, DATA_DIM)

    result = _heldout(model, x0)

    per_example = result["per_example_bits"]
    assert per_example.shape == (20,)
    assert result["elbo_bits_per_dim"] == pytest.approx(result["elbo_bits"] / DATA_DIM, rel=1e-12)
    assert result["elbo_bits_stderr"] == pytest.approx(per_example.std().item() / math.sqrt(20), rel=1e-5)
    parts = result["decoder_bits"] - result["prior_bits"] - result["diffusion_bits"]
    assert parts == pytest.approx(result["elbo_bits"], rel=1e-5)


def test_heldout_batches_cover_all_examples():
    model = _model(perturb=True)
    x0 = MEAN + VARIANCE.sqrt() * torch.randn(23, DATA_DIM)

    result = _heldout(model, x0, batch_size=5)

    assert result["per_example_bits"].shape == (23,)
    assert math.isfinite(result["elbo_bits"])


def test_heldout_matches_closed_form_in_bits():
    model = _model(perturb=True)
    x0 = MEAN + VARIANCE.sqrt() * torch.randn(4, DATA_DIM)
    num_copies = 4000

    result = _heldout(model, x0.repeat(num_copies, 1), batch_size=4 * num_copies)

    expected = _closed_form_terms(model, x0).elbo().mean().item() / math.log(2.0)
    stderr = result["elbo_bits_stderr"]
    assert abs(result["elbo_bits"] - expected) < 4 * stderr


def test_heldout_with_mlp_kernel():
    forward = GaussianForward(BetaSchedule.from_name("paper", 4))
    net = MLP(DATA_DIM, 2 * DATA_DIM, 4, hidden_dim=8, num_blocks=1)
    model = DiffusionModel(forward, EpsilonReverse(forward, net, (DATA_DIM,), "learned"))
    x0 = torch.randn(10, DATA_DIM)

    result = _heldout(model, x0, batch_size=3)

    assert result["per_example_bits"].shape == (10,)
    assert all(math.isfinite(result[key]) for key in ["elbo_bits", "prior_bits", "diffusion_bits", "decoder_bits"])
