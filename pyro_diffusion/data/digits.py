"""Handwritten 8x8 digits bundled with scikit-learn, split into train and held-out sets.

``sklearn.datasets.load_digits`` reads the 1797 images from a file installed with
scikit-learn, so no network access is needed. Each pixel is an integer in ``0..16``.
"""

import functools
import logging
import math

import numpy
import torch
from sklearn.datasets import load_digits

logger = logging.getLogger(__name__)

# Pixel values are integers 0..16, so a categorical pixel model has 17 levels.
NUM_DIGIT_LEVELS = 17


@functools.lru_cache(maxsize=1)
def _load_digit_images() -> numpy.ndarray:
    images = load_digits().images
    pixels = images.astype(numpy.int64)
    if not numpy.array_equal(pixels, images):
        raise RuntimeError(
            "sklearn.datasets.load_digits returned non-integer pixel values, but integers "
            "0..16 are expected: check the installed scikit-learn."
        )
    pixels.setflags(write=False)
    return pixels


def load_digits_split(test_fraction: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Shuffle the 1797 digit images with a fixed permutation and split them.

    The permutation is ``torch.randperm(1797, generator=torch.Generator().manual_seed(seed))``,
    so the split is fixed for a given ``seed``: every call returns the same images in the
    same order. PyTorch does not promise the same random stream across its versions, so
    a different PyTorch version may give a different split.
    The held-out set is the first :math:`n_{\text{test}} = \operatorname{round}(f \cdot 1797)`
    shuffled images (Python's ``round``) and the training set is the rest.

    :param test_fraction: fraction :math:`f` of images held out, in ``(0, 1)``.
    :param seed: seed of the permutation.
    :returns: ``(train, test)`` integer tensors (``torch.long``) with values in
        ``0..16`` and shapes ``[1797 - n_test, 8, 8]`` and ``[n_test, 8, 8]``.
        The defaults give 1438 training and 359 held-out images.
    :raises ValueError: if ``test_fraction`` is outside ``(0, 1)`` or leaves one of the
        two sets empty.
    """
    test_fraction = float(test_fraction)
    if not math.isfinite(test_fraction) or not 0.0 < test_fraction < 1.0:
        raise ValueError(
            f"test_fraction={test_fraction!r} is invalid: pass a fraction strictly between 0 and 1, e.g. 0.2."
        )

    images = torch.from_numpy(_load_digit_images().copy())
    num_images = images.shape[0]
    num_test = round(test_fraction * num_images)
    if num_test < 1 or num_test > num_images - 1:
        raise ValueError(
            f"test_fraction={test_fraction!r} gives {num_test} held-out images out of {num_images}: "
            f"choose a fraction that leaves at least one image in each set."
        )

    generator = torch.Generator().manual_seed(seed)
    permutation = torch.randperm(num_images, generator=generator)
    test = images[permutation[:num_test]]
    train = images[permutation[num_test:]]
    logger.debug(
        "load_digits_split: %d train and %d held-out images (seed=%d)", train.shape[0], test.shape[0], seed
    )
    return train, test
