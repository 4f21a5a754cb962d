import logging
import math

import numpy
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from pyro_diffusion.data import (
    TEXTURE_NAMES,
    crop_texture_patches,
    load_texture,
    render_disks,
    sample_dead_leaves,
    sample_leaf_radii,
    sample_texture_patches,
    texture_split_rows,
)
from pyro_diffusion.data import dead_leaves, textures

# ---------------------------------------------------------------------------
# Dead leaves
# ---------------------------------------------------------------------------


def _leaf_radius_cdf(r, min_radius, max_radius):
    """CDF of the density proportional to r^-3 on [min_radius, max_radius]."""
    return (min_radius**-2 - r**-2) / (min_radius**-2 - max_radius**-2)


def _window_radius_antiderivative(r, size):
    """Antiderivative of r^-3 (L + 2r)^2 = L^2 r^-3 + 4 L r^-2 + 4 r^-1."""
    return -(size**2) / (2.0 * r**2) - 4.0 * size / r + 4.0 * numpy.log(r)


def _lens_area(radius, distance):
    """Area of the intersection of two disks of one radius whose centres are distance apart."""
    if distance >= 2.0 * radius:
        return 0.0
    half = distance / 2.0
    return 2.0 * radius**2 * math.acos(half / radius) - distance * math.sqrt(radius**2 - half**2)


def _same_leaf_probability(distance, min_radius, max_radius):
    """Probability that two points at this distance show the same leaf in the plane model.

    The first disk to cover either point covers both with probability
    E[lens area] / E[union area], with r distributed as r^-3 on [min_radius, max_radius].
    """
    breakpoints = [distance / 2.0] if min_radius < distance / 2.0 < max_radius else None
    shared, _ = integrate.quad(
        lambda r: r**-3 * _lens_area(r, distance), min_radius, max_radius, points=breakpoints
    )
    union, _ = integrate.quad(
        lambda r: r**-3 * (2.0 * math.pi * r**2 - _lens_area(r, distance)),
        min_radius,
        max_radius,
        points=breakpoints,
    )
    return shared / union


@pytest.mark.parametrize("size", [16, 32])
def test_dead_leaves_shape_dtype_range(size):
    images = sample_dead_leaves(50, size=size, generator=torch.Generator().manual_seed(0))

    assert images.shape == (50, 1, size, size)
    assert images.dtype == torch.float32
    assert images.min().item() >= 0.0
    assert images.max().item() < 1.0


def test_dead_leaves_seeded_determinism():
    first = sample_dead_leaves(40, generator=torch.Generator().manual_seed(5))
    second = sample_dead_leaves(40, generator=torch.Generator().manual_seed(5))
    other = sample_dead_leaves(40, generator=torch.Generator().manual_seed(6))

    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_dead_leaves_images_differ_within_batch():
    images = sample_dead_leaves(20, generator=torch.Generator().manual_seed(0))

    distinct = images.flatten(1).unique(dim=0)
    assert distinct.shape[0] == 20


@settings(max_examples=25, deadline=None)
@given(
    num_images=st.integers(1, 6),
    size=st.integers(2, 12),
    min_radius=st.floats(0.3, 3.0),
    radius_ratio=st.floats(1.01, 20.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_dead_leaves_arbitrary_arguments(num_images, size, min_radius, radius_ratio, seed):
    images = sample_dead_leaves(
        num_images,
        size=size,
        min_radius=min_radius,
        max_radius=min_radius * radius_ratio,
        generator=torch.Generator().manual_seed(seed),
    )

    assert images.shape == (num_images, 1, size, size)
    assert torch.isfinite(images).all()
    assert images.min().item() >= 0.0
    assert images.max().item() < 1.0


def test_leaf_radii_match_power_law():
    min_radius, max_radius = 1.0, 16.0
    radii = sample_leaf_radii(20000, min_radius, max_radius, torch.Generator().manual_seed(0)).numpy()

    fit = stats.kstest(radii, lambda r: _leaf_radius_cdf(r, min_radius, max_radius))
    # The same radii against a density proportional to r^-2 must be rejected, so the
    # KS test has the power to see a wrong exponent.
    wrong_exponent = stats.kstest(radii, lambda r: (1.0 / min_radius - 1.0 / r) / (1.0 / min_radius - 1.0 / max_radius))

    assert radii.min() >= min_radius
    assert radii.max() <= max_radius
    assert fit.pvalue > 1e-3
    assert wrong_exponent.pvalue < 1e-6


@pytest.mark.parametrize("size", [4, 16, 32])
def test_window_radii_match_tilted_law(size):
    min_radius, max_radius = 1.0, 16.0
    radii = dead_leaves._sample_window_radii(20000, size, min_radius, max_radius, torch.Generator().manual_seed(1))
    radii = radii.numpy()

    low = _window_radius_antiderivative(min_radius, size)
    total = _window_radius_antiderivative(max_radius, size) - low
    numeric_total, _ = integrate.quad(lambda r: r**-3 * (size + 2.0 * r) ** 2, min_radius, max_radius)
    fit = stats.kstest(radii, lambda r: (_window_radius_antiderivative(r, size) - low) / total)

    assert total == pytest.approx(numeric_total, rel=1e-9)
    assert fit.pvalue > 1e-3


def test_dead_leaves_two_point_statistics():
    # In the plane model, two pixels at distance d share a leaf with a probability that
    # depends only on the radius law. Wrong radius tilting or centres confined to the
    # window moved these probabilities by 0.04 to 0.11.
    images = sample_dead_leaves(1000, generator=torch.Generator().manual_seed(2))[:, 0]

    for distance in (1, 2, 4, 8):
        expected = _same_leaf_probability(distance, 1.0, 16.0)
        horizontal = (images[:, :, distance:] == images[:, :, :-distance]).double().mean().item()
        vertical = (images[:, distance:, :] == images[:, :-distance, :]).double().mean().item()
        assert horizontal == pytest.approx(expected, abs=0.02), f"horizontal distance {distance}"
        assert vertical == pytest.approx(expected, abs=0.02), f"vertical distance {distance}"


def test_dead_leaves_piecewise_constant():
    images = sample_dead_leaves(200, generator=torch.Generator().manual_seed(3))

    num_levels = torch.tensor([image.unique().numel() for image in images], dtype=torch.float32)
    assert num_levels.min().item() >= 1
    assert num_levels.mean().item() < 256 / 4
    assert num_levels.max().item() < 256 / 2


def test_render_disks_first_disk_on_top():
    # Two disks of radius 3 overlap for 4 < x < 6. The first disk listed must win there.
    centres = torch.tensor([[[3.0, 4.0], [7.0, 4.0]]])
    radii = torch.tensor([[3.0, 3.0]])
    gray_levels = torch.tensor([[0.25, 0.75]])

    images, covered = render_disks(centres, radii, gray_levels, size=10)
    swapped, _ = render_disks(centres.flip(1), radii.flip(1), gray_levels.flip(1), size=10)

    overlap_pixel = (3, 4)  # row 3, column 4: centre (4.5, 3.5), inside both disks
    only_second_pixel = (3, 8)  # centre (8.5, 3.5), inside the second disk only
    empty_pixel = (9, 0)  # centre (0.5, 9.5), outside both disks
    assert images[0, 0][overlap_pixel].item() == 0.25
    assert swapped[0, 0][overlap_pixel].item() == 0.75
    assert images[0, 0][only_second_pixel].item() == 0.75
    assert images[0, 0][empty_pixel].item() == 0.0
    assert not covered[0, 0][empty_pixel].item()
    assert covered[0, 0][overlap_pixel].item()


def test_render_disks_matches_brute_force():
    generator = torch.Generator().manual_seed(4)
    size = 9
    centres = torch.rand(3, 12, 2, generator=generator) * 13.0 - 2.0
    radii = torch.rand(3, 12, generator=generator) * 4.0
    gray_levels = torch.rand(3, 12, generator=generator)

    images, covered = render_disks(centres, radii, gray_levels, size)

    for n in range(3):
        for row in range(size):
            for column in range(size):
                expected_value, expected_covered = 0.0, False
                for k in range(12):
                    dx = column + 0.5 - centres[n, k, 0].item()
                    dy = row + 0.5 - centres[n, k, 1].item()
                    if dx * dx + dy * dy <= radii[n, k].item() ** 2:
                        expected_value, expected_covered = gray_levels[n, k].item(), True
                        break
                assert covered[n, 0, row, column].item() == expected_covered, (n, row, column)
                assert images[n, 0, row, column].item() == pytest.approx(expected_value), (n, row, column)


def test_rasterizing_matches_pair_test():
    # sample_dead_leaves switches between two first-disk searches, so they must agree.
    size, num_images, num_disks = 16, 20, 40
    generator = torch.Generator().manual_seed(7)
    centre_x, centre_y, radii, _ = dead_leaves._draw_disks(num_images, num_disks, size, 1.0, 16.0, generator)

    rasterized = dead_leaves._first_disk_per_image_pixel(centre_x, centre_y, radii, size)

    image_index = torch.arange(num_images).repeat_interleave(size * size)
    coordinates = torch.arange(size, dtype=torch.float32) + 0.5
    pixel_y = coordinates.repeat_interleave(size).repeat(num_images)
    pixel_x = coordinates.repeat(size * num_images)
    paired = dead_leaves._first_disk_per_pixel(
        pixel_x, pixel_y, centre_x[image_index], centre_y[image_index], radii[image_index]
    )
    assert torch.equal(rasterized.flatten(), paired)
    assert (paired < num_disks).any()
    assert (paired == num_disks).any()


def test_dead_leaves_cap_fills_background(caplog):
    with caplog.at_level(logging.WARNING, logger="pyro_diffusion.data.dead_leaves"):
        images = sample_dead_leaves(
            4, size=8, min_radius=0.5, max_radius=1.0, max_disks=1, generator=torch.Generator().manual_seed(0)
        )

    assert "max_disks=1" in caplog.text
    assert images.min().item() >= 0.0
    assert images.max().item() < 1.0
    # One disk cannot cover all 64 pixels, so each image is that disk on one background.
    for image in images:
        assert image.unique().numel() <= 2


@pytest.mark.parametrize("num_images", [0, -3, 2.5, True])
def test_dead_leaves_bad_count(num_images):
    with pytest.raises(ValueError, match="num_images"):
        sample_dead_leaves(num_images)


@pytest.mark.parametrize("size", [1, 0, 3.0])
def test_dead_leaves_bad_size(size):
    with pytest.raises(ValueError, match="size"):
        sample_dead_leaves(2, size=size)


@pytest.mark.parametrize(
    ("min_radius", "max_radius"),
    [(0.0, 4.0), (-1.0, 4.0), (4.0, 4.0), (5.0, 4.0), (1.0, math.inf), (math.nan, 4.0)],
)
def test_dead_leaves_bad_radii(min_radius, max_radius):
    with pytest.raises(ValueError, match="0 < min_radius < max_radius"):
        sample_dead_leaves(2, min_radius=min_radius, max_radius=max_radius)


def test_dead_leaves_bad_cap():
    with pytest.raises(ValueError, match="max_disks"):
        sample_dead_leaves(2, max_disks=0)


# ---------------------------------------------------------------------------
# Texture patches
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", TEXTURE_NAMES)
def test_texture_photographs_load(name):
    image = load_texture(name)

    assert image.shape == (512, 512)
    assert image.dtype == torch.uint8
    assert image.float().std().item() > 10.0


def test_texture_photographs_cached():
    first = textures._load_texture_array("brick")
    second = textures._load_texture_array("brick")
    copy = load_texture("brick")
    copy.zero_()

    assert first is second
    assert not first.flags.writeable
    assert first.max() > 0


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_texture_patches_shape_dtype_range(split):
    patches = sample_texture_patches(300, size=16, split=split, generator=torch.Generator().manual_seed(0))

    assert patches.shape == (300, 1, 16, 16)
    assert patches.dtype == torch.float32
    assert patches.min().item() >= 0.0
    assert patches.max().item() <= 1.0
    levels = patches * 255.0
    assert torch.allclose(levels, levels.round(), atol=1e-4)


def test_texture_patches_seeded_determinism():
    first = sample_texture_patches(50, generator=torch.Generator().manual_seed(1))
    second = sample_texture_patches(50, generator=torch.Generator().manual_seed(1))
    other = sample_texture_patches(50, generator=torch.Generator().manual_seed(2))

    assert torch.equal(first, second)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_texture_patches_are_crops_in_split(split):
    names = ("gravel", "brick")
    patches, positions = sample_texture_patches(
        400, size=12, split=split, textures=names, generator=torch.Generator().manual_seed(3), return_positions=True
    )

    assert positions.shape == (400, 3)
    assert positions.dtype == torch.long
    for patch, (texture_index, row, column) in zip(patches, positions.tolist()):
        name = names[texture_index]
        start, stop = texture_split_rows(name, split)
        photo = load_texture(name)
        assert row >= start
        assert row + 12 <= stop
        assert column >= 0
        assert column + 12 <= photo.shape[1]
        expected = photo[row : row + 12, column : column + 12].float() / 255.0
        assert torch.equal(patch[0], expected)


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_texture_patch_found_only_in_split(split):
    # Search each photograph for every place a patch occurs, without trusting the
    # returned positions: every match must lie inside the split's rows.
    for name in TEXTURE_NAMES:
        patches = sample_texture_patches(
            2, size=8, split=split, textures=name, generator=torch.Generator().manual_seed(4)
        )
        photo = load_texture(name).numpy()
        windows = numpy.lib.stride_tricks.sliding_window_view(photo, (8, 8))
        start, stop = texture_split_rows(name, split)
        for patch in patches:
            levels = numpy.rint(patch[0].numpy() * 255.0).astype(numpy.uint8)
            match_rows, _ = numpy.nonzero((windows == levels).all(axis=(2, 3)))
            assert match_rows.size >= 1, name
            assert match_rows.min() >= start, name
            assert match_rows.max() + 8 <= stop, name


@pytest.mark.parametrize("name", TEXTURE_NAMES)
def test_texture_split_regions_disjoint(name):
    train_start, train_stop = texture_split_rows(name, "train")
    heldout_start, heldout_stop = texture_split_rows(name, "heldout")

    assert (train_start, train_stop) == (0, 384)
    assert (heldout_start, heldout_stop) == (384, 512)
    assert set(range(train_start, train_stop)).isdisjoint(range(heldout_start, heldout_stop))


def test_texture_patch_rows_never_cross_boundary():
    size = 32
    _, train_positions = sample_texture_patches(
        3000, size=size, split="train", generator=torch.Generator().manual_seed(5), return_positions=True
    )
    _, heldout_positions = sample_texture_patches(
        3000, size=size, split="heldout", generator=torch.Generator().manual_seed(6), return_positions=True
    )

    last_train_row = train_positions[:, 1].max().item() + size - 1
    first_heldout_row = heldout_positions[:, 1].min().item()
    assert last_train_row < 384
    assert first_heldout_row >= 384
    # 3000 uniform corners miss the first or last three allowed rows with probability
    # below e^-20, so these checks fail only if the range is cut short.
    assert train_positions[:, 1].min().item() <= 2
    assert last_train_row >= 381
    assert first_heldout_row <= 386
    assert heldout_positions[:, 1].max().item() + size - 1 >= 509


def test_texture_choice_is_uniform():
    _, positions = sample_texture_patches(
        6000, size=4, generator=torch.Generator().manual_seed(7), return_positions=True
    )

    counts = torch.bincount(positions[:, 0], minlength=3).numpy()
    assert stats.chisquare(counts).pvalue > 1e-3


@settings(max_examples=25, deadline=None)
@given(
    num_patches=st.integers(1, 10),
    size=st.integers(1, 128),
    split=st.sampled_from(["train", "heldout"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_texture_patches_arbitrary_arguments(num_patches, size, split, seed):
    patches, positions = sample_texture_patches(
        num_patches, size=size, split=split, generator=torch.Generator().manual_seed(seed), return_positions=True
    )

    assert patches.shape == (num_patches, 1, size, size)
    for patch, (texture_index, row, column) in zip(patches, positions.tolist()):
        name = TEXTURE_NAMES[texture_index]
        start, stop = texture_split_rows(name, split)
        assert row >= start
        assert row + size <= stop
        photo = load_texture(name)
        assert torch.equal(patch[0], photo[row : row + size, column : column + size].float() / 255.0)


def test_crop_texture_patches_matches_slicing():
    image = torch.arange(30 * 20).reshape(30, 20)
    rows = torch.tensor([0, 5, 27])
    columns = torch.tensor([17, 0, 9])

    patches = crop_texture_patches(image, rows, columns, 3)

    assert patches.shape == (3, 3, 3)
    for patch, row, column in zip(patches, rows.tolist(), columns.tolist()):
        assert torch.equal(patch, image[row : row + 3, column : column + 3])


@pytest.mark.parametrize(("row", "column"), [(28, 0), (0, 18), (-1, 0)])
def test_crop_texture_patches_outside_image(row, column):
    image = torch.zeros(30, 20)
    with pytest.raises(ValueError, match="fit only"):
        crop_texture_patches(image, torch.tensor([row]), torch.tensor([column]), 3)


def test_texture_size_limits_follow_split():
    train = sample_texture_patches(2, size=384, split="train")

    assert train.shape == (2, 1, 384, 384)
    with pytest.raises(ValueError, match="size <= 128"):
        sample_texture_patches(2, size=129, split="heldout")
    with pytest.raises(ValueError, match="size <= 384"):
        sample_texture_patches(2, size=385, split="train")


@pytest.mark.parametrize("size", [0, -4, 2.0])
def test_texture_bad_size(size):
    with pytest.raises(ValueError, match="size"):
        sample_texture_patches(2, size=size)


@pytest.mark.parametrize("num_patches", [0, -1, 1.5, False])
def test_texture_bad_count(num_patches):
    with pytest.raises(ValueError, match="num_patches"):
        sample_texture_patches(num_patches)


@pytest.mark.parametrize("split", ["test", "valid", "Train", ""])
def test_texture_bad_split(split):
    with pytest.raises(ValueError, match="split"):
        sample_texture_patches(2, split=split)


@pytest.mark.parametrize("names", [("bark",), ("brick", "Grass"), "camera"])
def test_texture_bad_name(names):
    with pytest.raises(ValueError, match="unknown"):
        sample_texture_patches(2, textures=names)


def test_texture_empty_names():
    with pytest.raises(ValueError, match="empty"):
        sample_texture_patches(2, textures=())
