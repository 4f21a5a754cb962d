import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyro_diffusion.baselines import DEFAULT_PSEUDOCOUNT, categorical_baseline_bits_per_dim
from pyro_diffusion.data.digits import NUM_DIGIT_LEVELS, load_digits_split


def _bits_per_dim_by_loops(train, test, num_levels, pseudocount):
    num_train = train.shape[0]
    train_rows = train.reshape(num_train, -1).tolist()
    test_rows = test.reshape(test.shape[0], -1).tolist()
    total_bits = 0.0
    for row in test_rows:
        for dim, value in enumerate(row):
            count = sum(1 for train_row in train_rows if train_row[dim] == value)
            probability = (count + pseudocount) / (num_train + num_levels * pseudocount)
            total_bits -= math.log2(probability)
    return total_bits / (len(test_rows) * len(test_rows[0]))


@st.composite
def _level_data(draw):
    num_levels = draw(st.integers(min_value=1, max_value=5))
    trailing_shape = draw(st.lists(st.integers(min_value=1, max_value=3), min_size=1, max_size=2))
    num_train = draw(st.integers(min_value=1, max_value=6))
    num_test = draw(st.integers(min_value=1, max_value=6))
    num_values = (num_train + num_test) * math.prod(trailing_shape)
    values = draw(st.lists(st.integers(0, num_levels - 1), min_size=num_values, max_size=num_values))
    levels = torch.tensor(values, dtype=torch.long).reshape(num_train + num_test, *trailing_shape)
    pseudocount = draw(st.floats(min_value=0.01, max_value=5.0))
    return levels[:num_train], levels[num_train:], num_levels, pseudocount


@settings(max_examples=40, deadline=None)
@given(data=_level_data())
def test_matches_loop_implementation(data):
    train, test, num_levels, pseudocount = data
    expected = _bits_per_dim_by_loops(train, test, num_levels, pseudocount)

    assert categorical_baseline_bits_per_dim(train, test, num_levels, pseudocount) == pytest.approx(expected, rel=1e-12)


@settings(max_examples=20, deadline=None)
@given(data=_level_data(), seed=st.integers(min_value=0, max_value=1000))
def test_invariant_to_train_order(data, seed):
    train, test, num_levels, pseudocount = data
    permutation = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(seed))

    original = categorical_baseline_bits_per_dim(train, test, num_levels, pseudocount)
    shuffled = categorical_baseline_bits_per_dim(train[permutation], test, num_levels, pseudocount)
    assert shuffled == pytest.approx(original, rel=1e-12)


def test_huge_pseudocount_gives_uniform():
    train = torch.zeros(4, 3, dtype=torch.long)
    test = torch.full((2, 3), 4, dtype=torch.long)

    bits = categorical_baseline_bits_per_dim(train, test, num_levels=5, pseudocount=1e9)
    assert bits == pytest.approx(math.log2(5), rel=1e-6)


def test_unseen_level_has_finite_cost():
    train = torch.zeros(10, 2, dtype=torch.long)
    test = torch.ones(1, 2, dtype=torch.long)

    bits = categorical_baseline_bits_per_dim(train, test, num_levels=2, pseudocount=0.5)
    # p(1) = 0.5 / (10 + 2 * 0.5) = 1 / 22.
    assert bits == pytest.approx(math.log2(22), rel=1e-12)


def test_digits_default_split_value():
    train, test = load_digits_split()

    default = categorical_baseline_bits_per_dim(train, test, NUM_DIGIT_LEVELS)
    half = categorical_baseline_bits_per_dim(train, test, NUM_DIGIT_LEVELS, pseudocount=0.5)
    assert DEFAULT_PSEUDOCOUNT == 1.0
    assert default == pytest.approx(2.4228, abs=1e-3)
    assert half == pytest.approx(2.4214, abs=1e-3)


def test_rejects_value_out_of_range():
    train = torch.zeros(3, 4, dtype=torch.long)
    test = torch.zeros(2, 4, dtype=torch.long)
    test[1, 2] = 17

    with pytest.raises(ValueError, match=r"test has 1 values outside \[0, 17\).*17 at index \(1, 2\)"):
        categorical_baseline_bits_per_dim(train, test, num_levels=17)
    negative_train = train.clone()
    negative_train[0, 0] = -1
    with pytest.raises(ValueError, match=r"train has 1 values outside \[0, 17\).*-1 at index \(0, 0\)"):
        categorical_baseline_bits_per_dim(negative_train, test, num_levels=17)


def test_rejects_shape_mismatch():
    with pytest.raises(ValueError, match=r"train has shape \[3, 8, 8\] and test has shape \[2, 64\]"):
        categorical_baseline_bits_per_dim(torch.zeros(3, 8, 8, dtype=torch.long), torch.zeros(2, 64, dtype=torch.long), 17)


def test_rejects_float_levels():
    with pytest.raises(ValueError, match="train has dtype torch.float32"):
        categorical_baseline_bits_per_dim(torch.zeros(3, 4), torch.zeros(2, 4, dtype=torch.long), 17)


def test_rejects_empty_sets():
    levels = torch.zeros(3, 4, dtype=torch.long)

    with pytest.raises(ValueError, match="train has shape"):
        categorical_baseline_bits_per_dim(levels[:0], levels, 17)
    with pytest.raises(ValueError, match="test has shape"):
        categorical_baseline_bits_per_dim(levels, levels[:0], 17)


@pytest.mark.parametrize("pseudocount", [0.0, -1.0, math.nan, math.inf])
def test_rejects_invalid_pseudocount(pseudocount):
    levels = torch.zeros(3, 4, dtype=torch.long)

    with pytest.raises(ValueError, match="pseudocount="):
        categorical_baseline_bits_per_dim(levels, levels, 17, pseudocount=pseudocount)


@pytest.mark.parametrize("num_levels", [0, -3, 2.5, True])
def test_rejects_invalid_num_levels(num_levels):
    levels = torch.zeros(3, 4, dtype=torch.long)

    with pytest.raises(ValueError, match="num_levels="):
        categorical_baseline_bits_per_dim(levels, levels, num_levels)
