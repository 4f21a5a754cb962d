import math

import numpy
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits

from pyro_diffusion.data.digits import NUM_DIGIT_LEVELS, load_digits_split

NUM_IMAGES = 1797


def _row_counts(images: numpy.ndarray) -> dict[bytes, int]:
    counts: dict[bytes, int] = {}
    for row in images.reshape(images.shape[0], -1).astype(numpy.int64):
        key = row.tobytes()
        counts[key] = counts.get(key, 0) + 1
    return counts


def test_default_split_shapes_and_dtype():
    train, test = load_digits_split()

    assert train.shape == (1438, 8, 8)
    assert test.shape == (359, 8, 8)
    assert train.dtype == torch.long
    assert test.dtype == torch.long


def test_values_within_levels():
    train, test = load_digits_split()
    values = torch.cat([train, test])

    assert values.min().item() == 0
    assert values.max().item() == NUM_DIGIT_LEVELS - 1
    assert set(values.unique().tolist()) == set(range(NUM_DIGIT_LEVELS))


def test_split_is_fixed_for_seed():
    first_train, first_test = load_digits_split(seed=3)
    second_train, second_test = load_digits_split(seed=3)
    other_train, _ = load_digits_split(seed=4)

    assert torch.equal(first_train, second_train)
    assert torch.equal(first_test, second_test)
    assert not torch.equal(first_train, other_train)


def test_split_is_shuffled():
    train, test = load_digits_split()
    original = torch.from_numpy(load_digits().images.astype(numpy.int64))

    assert not torch.equal(test, original[: test.shape[0]])
    assert not torch.equal(train, original[test.shape[0] :])


def test_returned_tensors_are_independent_copies():
    train, _ = load_digits_split()
    train.fill_(-1)
    fresh_train, _ = load_digits_split()

    assert fresh_train.min().item() == 0


@settings(max_examples=15, deadline=None)
@given(
    test_fraction=st.floats(min_value=0.01, max_value=0.99),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
)
def test_split_partitions_all_images(test_fraction, seed):
    train, test = load_digits_split(test_fraction=test_fraction, seed=seed)
    original = load_digits().images

    assert test.shape[0] == round(test_fraction * NUM_IMAGES)
    assert train.shape[0] + test.shape[0] == NUM_IMAGES
    combined = numpy.concatenate([train.numpy(), test.numpy()])
    assert _row_counts(combined) == _row_counts(original)


@pytest.mark.parametrize("test_fraction", [0.0, 1.0, -0.2, 1.5, math.nan, math.inf, 1e-6, 1.0 - 1e-6])
def test_invalid_test_fraction_rejected(test_fraction):
    with pytest.raises(ValueError, match="test_fraction="):
        load_digits_split(test_fraction=test_fraction)
