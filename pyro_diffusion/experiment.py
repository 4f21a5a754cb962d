"""
Data preparation, model construction and run folders for the command line.

A run folder contains ``checkpoint.pt`` (model, optimizer and random state),
``heldout.pt`` (the held-out split on the model's scale, before
dequantization), ``config.json``, ``metrics.json`` and ``samples.png``.
"""

import dataclasses
import enum
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from . import data as datasets
from .baselines import categorical_baseline_bits_per_dim
from .binomial import BernoulliPrediction, BernoulliReverse, BinomialForward
from .decoders import BinnedDecoder
from .dequantize import UniformDequantization
from .forward import GaussianForward
from .model import DiffusionModel
from .nets import MLP, MultiScaleConvNet
from .options import parse_option
from .reverse import EpsilonReverse, PaperReverse, ReverseVariance
from .schedules import BetaSchedule, LearnedBetaSchedule, ScheduleKind

logger = logging.getLogger(__name__)

__all__ = [
    "Dataset",
    "KernelKind",
    "NetworkKind",
    "PreparedData",
    "RunConfig",
    "build_model",
    "prepare_data",
]


class Dataset(str, enum.Enum):
    """The data sets that need no download."""

    #: scikit-learn's 1797 handwritten digits, 8x8 pixels, integer levels 0..16.
    DIGITS = "digits"
    #: The 2-D Swiss roll with Gaussian noise, scaled to variance 1.
    SWISS_ROLL = "swiss-roll"
    #: Binary sequences of length 20 with a 1 every fifth bin at a random phase.
    HEARTBEAT = "heartbeat"
    #: Dead-leaves images of occluding disks, quantized to 8-bit gray levels.
    DEAD_LEAVES = "dead-leaves"
    #: Patches of scikit-image's brick, grass and gravel photographs, 8-bit.
    TEXTURES = "textures"
    #: MNIST through torchvision, from ``--data-root``.
    MNIST = "mnist"
    #: Fashion-MNIST through torchvision, from ``--data-root``.
    FASHION_MNIST = "fashion-mnist"
    #: CIFAR-10 through torchvision, from ``--data-root``.
    CIFAR10 = "cifar10"
    #: A user's own array, given by ``--data``.
    ARRAY = "array"


class NetworkKind(str, enum.Enum):
    """The reverse network."""

    #: The residual MLP, for any data.
    MLP = "mlp"
    #: The multi-scale convolutional network of Sohl-Dickstein et al., for images.
    CONV = "conv"
    #: A U-Net with a sinusoidal time embedding, for images.
    UNET = "unet"


class KernelKind(str, enum.Enum):
    """The reverse kernel's parameterization."""

    #: Noise prediction with a variance between the entropy bounds.
    EPSILON = "epsilon"
    #: The sigmoid-variance, perturbed-mean kernel of Sohl-Dickstein et al.
    PAPER = "paper"
    #: Binomial diffusion with a Bernoulli reverse kernel, for binary data.
    BINOMIAL = "binomial"


@dataclass(frozen=True)
class RunConfig:
    """
    The settings of one training run; every field is saved in the run folder.

    Fields left ``None`` take the data set's default (see :data:`DEFAULTS`).
    """

    dataset: str = "digits"
    data: Optional[str] = None
    timesteps: Optional[int] = None
    steps: Optional[int] = None
    batch_size: int = 128
    learning_rate: float = 2e-3
    final_learning_rate_fraction: float = 0.05
    hidden_dim: Optional[int] = None
    num_blocks: int = 3
    dropout: Optional[float] = None
    ema_decay: float = 0.999
    schedule: Optional[str] = None
    beta_1: Optional[float] = None
    kernel: Optional[str] = None
    network: Optional[str] = None
    variance: str = "learned"
    prediction: Optional[str] = None
    timestep_sampling: str = "importance"
    noise: float = 0.05
    levels: Optional[int] = None
    image_size: Optional[int] = None
    data_root: Optional[str] = None
    download: bool = False
    seed: int = 0

    def resolved(self):
        """
        Fill the fields left ``None`` with the data set's defaults and check
        every value.

        :raises ValueError: naming the invalid value and the allowed ones.
        """
        dataset = parse_option(Dataset, self.dataset, "dataset")
        if dataset is Dataset.ARRAY and not self.data:
            raise ValueError("dataset 'array' needs a file: pass --data PATH")
        defaults = DEFAULTS[dataset]
        if dataset is Dataset.ARRAY and self.levels is not None:
            defaults = LEVEL_ARRAY_DEFAULTS
        values = {k: (v if v is not None else defaults.get(k)) for k, v in dataclasses.asdict(self).items()}
        config = RunConfig(**values)
        parse_schedule(config.schedule)
        parse_option(KernelKind, config.kernel, "kernel")
        if config.network is None:
            config = dataclasses.replace(config, network=NetworkKind.MLP.value)
        parse_option(NetworkKind, config.network, "network")
        ReverseVariance.parse(config.variance)
        binomial = config.kernel == KernelKind.BINOMIAL.value
        if dataset is Dataset.HEARTBEAT and not binomial:
            raise ValueError(
                f"the heartbeat data are binary, which a Gaussian kernel ({config.kernel!r}) gives an unbounded "
                "density: use --kernel binomial"
            )
        if binomial and (self.schedule is not None or self.beta_1 is not None):
            raise ValueError(
                "schedule and beta_1 apply to Gaussian kernels; the binomial kernel uses the schedule "
                "1 / (T - t + 1): drop them"
            )
        if config.prediction is not None:
            BernoulliPrediction.parse(config.prediction)
            if config.kernel != KernelKind.BINOMIAL.value:
                raise ValueError(
                    f"prediction applies to the binomial kernel, not kernel {config.kernel!r}: drop it"
                )
        elif config.kernel == KernelKind.BINOMIAL.value:
            config = dataclasses.replace(config, prediction=BernoulliPrediction.X0.value)
        if config.timestep_sampling not in ("uniform", "importance"):
            raise ValueError(
                f"unknown timestep sampling {config.timestep_sampling!r}: use one of uniform, importance"
            )
        for name in ("timesteps", "steps", "batch_size", "hidden_dim", "num_blocks"):
            value = getattr(config, name)
            minimum = 0 if name in ("steps", "num_blocks") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        if dataset in TORCHVISION_DATASETS:
            if not config.data_root:
                raise ValueError(f"dataset {dataset.value!r} needs --data-root: the folder of torchvision's files")
        elif config.data_root is not None or config.download:
            names = ", ".join(d.value for d in TORCHVISION_DATASETS)
            raise ValueError(f"data_root and download apply to the torchvision data sets ({names}), not to {dataset.value!r}")
        if config.image_size is not None:
            if dataset not in IMAGE_DATASETS:
                names = ", ".join(d.value for d in IMAGE_DATASETS)
                raise ValueError(f"image_size applies to the generated images ({names}), not to dataset {dataset.value!r}")
            if isinstance(config.image_size, bool) or not isinstance(config.image_size, int) or config.image_size < 4:
                raise ValueError(f"image_size must be an integer >= 4, got {config.image_size!r}")
        if config.levels is not None:
            if dataset is not Dataset.ARRAY:
                raise ValueError(f"levels applies to your own array (--data), not to dataset {dataset.value!r}")
            if isinstance(config.levels, bool) or not isinstance(config.levels, int) or config.levels < 2:
                raise ValueError(f"levels must be an integer >= 2, got {config.levels!r}")
        if isinstance(config.seed, bool) or not isinstance(config.seed, int) or not 0 <= config.seed < 2**63:
            raise ValueError(f"seed must be an integer in [0, 2**63), got {config.seed!r}")
        if not (math.isfinite(config.learning_rate) and config.learning_rate > 0):
            raise ValueError(f"learning_rate must be positive, got {config.learning_rate!r}")
        if not 0 < config.final_learning_rate_fraction <= 1:
            raise ValueError(
                "final_learning_rate_fraction must be in (0, 1], got "
                f"{config.final_learning_rate_fraction!r}"
            )
        if config.beta_1 is not None and not 0 < config.beta_1 < 1:
            raise ValueError(f"beta_1 = {config.beta_1!r} is outside (0, 1): pick a small positive value such as 1e-3")
        if not 0 <= config.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {config.dropout!r}")
        if not 0 <= config.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1) (0 turns EMA off), got {config.ema_decay!r}")
        if not (math.isfinite(config.noise) and config.noise >= MIN_SWISS_ROLL_NOISE):
            raise ValueError(
                f"noise must be a finite number >= {MIN_SWISS_ROLL_NOISE}, got {config.noise!r}: "
                "the exact log-likelihood integrates the density on a grid that grows as 1 / noise"
            )
        return config


#: The ``schedule`` value of a learned schedule: :math:`\beta_2..\beta_T`
#: start at the paper's schedule and are trained with the model.
#: ``"learned-KIND"`` starts them at the fixed schedule ``KIND`` instead.
LEARNED_SCHEDULE = "learned"


def parse_schedule(value):
    """
    Split a ``schedule`` setting into the fixed schedule it starts from and
    whether SVI learns it.

    :param str value: a fixed schedule name (``"paper"``, ``"log-snr"``, ...),
        ``"learned"``, or ``"learned-"`` followed by a fixed schedule name.
    :returns: ``(kind, learned)`` with ``kind`` a :class:`ScheduleKind`.
    :raises ValueError: naming the value and the allowed ones.
    """
    text = str(value)
    learned = text == LEARNED_SCHEDULE or text.startswith(LEARNED_SCHEDULE + "-")
    start = text[len(LEARNED_SCHEDULE) + 1 :] if learned else text
    if text == LEARNED_SCHEDULE:
        start = ScheduleKind.PAPER.value
    try:
        return ScheduleKind.parse(start), learned
    except ValueError:
        fixed = [kind.value for kind in ScheduleKind]
        names = ", ".join(fixed + [LEARNED_SCHEDULE] + [f"{LEARNED_SCHEDULE}-{name}" for name in fixed])
        raise ValueError(f"unknown beta schedule {value!r}: use one of {names}") from None

#: Defaults for a user array of integer levels. ``beta_1`` is left to
#: :func:`build_model`, which sizes it to the bin width.
LEVEL_ARRAY_DEFAULTS = {
    "timesteps": 1000,
    "steps": 5000,
    "hidden_dim": 256,
    "schedule": "paper",
    "dropout": 0.3,
    "kernel": "epsilon",
}

#: The first step's noise standard deviation for dequantized data, in bins.
#: On the digits, 2.3 bins (beta_1 = 0.15) gave a lower held-out bound than
#: 1.7, 1.2, 0.85 or 0.6 bins (beta_1 = 0.08, 0.04, 0.02, 0.01) in runs of
#: 4000 to 8000 steps.
FIRST_STEP_BINS = 2.3

#: The generated image data sets, 8-bit gray levels in one channel.
IMAGE_DATASETS = (Dataset.DEAD_LEAVES, Dataset.TEXTURES)

#: The data sets read through torchvision's classes.
TORCHVISION_DATASETS = (Dataset.MNIST, Dataset.FASHION_MNIST, Dataset.CIFAR10)

#: The held-out images taken from the start of a torchvision test split:
#: the bound costs T network evaluations per image.
TORCHVISION_HELDOUT = 256

#: Training and held-out images drawn for each image data set. The held-out
#: set is small because the bound costs T network evaluations per image.
IMAGE_SPLIT_SIZES = (5000, 200)

#: The number of gray levels of the generated images.
IMAGE_LEVELS = 256

#: The minimum number of examples in a user array: one held out, two to train.
MIN_ARRAY_EXAMPLES = 3

#: The smallest Swiss roll noise: the exact density is integrated on a grid
#: whose size grows as ``1 / noise``.
MIN_SWISS_ROLL_NOISE = 1e-3

#: Defaults per data set. The digits settings reach a held-out bound below
#: the per-pixel categorical baseline within the default number of steps.
DEFAULTS = {
    Dataset.DIGITS: {"timesteps": 1000, "steps": 6000, "hidden_dim": 256, "schedule": "paper", "beta_1": 0.15, "dropout": 0.3, "kernel": "epsilon"},
    Dataset.SWISS_ROLL: {"timesteps": 40, "steps": 5000, "hidden_dim": 128, "schedule": "log-snr", "beta_1": 1e-4, "dropout": 0.0, "kernel": "epsilon"},
    Dataset.HEARTBEAT: {"timesteps": 2000, "steps": 16000, "hidden_dim": 128, "schedule": "paper", "kernel": "binomial", "dropout": 0.0},
    Dataset.DEAD_LEAVES: {"timesteps": 1000, "steps": 3000, "hidden_dim": 16, "schedule": "paper", "dropout": 0.0, "kernel": "epsilon", "network": "conv", "image_size": 16},
    Dataset.TEXTURES: {"timesteps": 500, "steps": 3000, "hidden_dim": 16, "schedule": "paper", "dropout": 0.0, "kernel": "epsilon", "network": "conv", "image_size": 16},
    Dataset.MNIST: {"timesteps": 500, "steps": 2000, "hidden_dim": 16, "schedule": "paper", "dropout": 0.1, "kernel": "epsilon", "network": "unet"},
    Dataset.FASHION_MNIST: {"timesteps": 500, "steps": 2000, "hidden_dim": 16, "schedule": "paper", "dropout": 0.1, "kernel": "epsilon", "network": "unet"},
    Dataset.CIFAR10: {"timesteps": 500, "steps": 2000, "hidden_dim": 16, "schedule": "paper", "dropout": 0.1, "kernel": "epsilon", "network": "unet"},
    Dataset.ARRAY: {"timesteps": 1000, "steps": 5000, "hidden_dim": 256, "schedule": "log-snr", "beta_1": 1e-3, "dropout": 0.1, "kernel": "epsilon"},
}


@dataclass
class PreparedData:
    """
    Training and held-out data in the form the model trains on.

    :ivar torch.Tensor train: ``[N, D]``; integer levels when
        ``dequantization`` is set, else float32 on the model's scale.
    :ivar torch.Tensor heldout: ``[M, D]``, the same form.
    :ivar dequantization: the map from integer levels to the model's scale, or ``None``.
    :ivar image_shape: ``(H, W)`` when each example is an image, else ``None``.
    :ivar log_density: the exact log density in nats on the model's scale,
        ``[M, D] -> [M]``, where it is known, else ``None``.
    :ivar center: the offset subtracted from continuous data, ``[D]``.
    :ivar scale: the constant continuous data are divided by.
    :ivar example_shape: the shape of one example before flattening.
    :ivar null_log_likelihood_bits: :math:`L_{null}` per example in bits
        where the unit Gaussian is not the null model (binary data), else ``None``.
    """

    train: torch.Tensor
    heldout: torch.Tensor
    dequantization: Optional[UniformDequantization] = None
    image_shape: Optional[tuple] = None
    log_density: Optional[Callable] = None
    center: Optional[torch.Tensor] = None
    scale: float = 1.0
    example_shape: Optional[tuple] = None
    null_log_likelihood_bits: Optional[float] = None

    def to_data_units(self, x):
        """
        Map model-scale values ``[N, D]`` back to the data's units and shape:
        integer levels for dequantized data, else ``x * scale + center``
        reshaped to ``[N] + example_shape``.
        """
        if self.dequantization is not None:
            x = self.dequantization.to_levels(x)
        elif self.center is not None:
            x = x * self.scale + self.center
        if self.example_shape is not None:
            x = x.reshape((len(x),) + tuple(self.example_shape))
        return x

    def heldout_in_data_units(self):
        """Return the held-out examples in the data's units and shape, with integer levels left as they are."""
        heldout = self.heldout
        if self.dequantization is None:
            return self.to_data_units(heldout)
        if self.example_shape is not None:
            heldout = heldout.reshape((len(heldout),) + tuple(self.example_shape))
        return heldout

    def state_dict(self):
        """Return the facts needed to map samples back to data units, without the data."""
        return {
            "dequantization": self.dequantization.state_dict() if self.dequantization else None,
            "image_shape": self.image_shape,
            "center": self.center,
            "scale": self.scale,
            "example_shape": self.example_shape,
            "null_log_likelihood_bits": self.null_log_likelihood_bits,
            "baseline_nll_bits_per_dim": baseline_bits_per_dim(self) if self.train is not None else None,
        }

    @property
    def dim(self):
        return self.heldout.shape[1]

    @classmethod
    def from_state_dict(cls, state, heldout):
        """
        Rebuild the held-out side of a run from :meth:`state_dict` and the
        saved held-out tensor; ``train`` is ``None``.
        """
        dequantization = state.get("dequantization")
        return cls(
            train=None,
            heldout=heldout,
            dequantization=UniformDequantization.from_state_dict(dequantization) if dequantization else None,
            image_shape=state.get("image_shape"),
            center=state.get("center"),
            scale=state.get("scale", 1.0),
            example_shape=state.get("example_shape"),
            null_log_likelihood_bits=state.get("null_log_likelihood_bits"),
        )

    def model_scale(self, batch, generator=None):
        """Map a batch of stored data to the model's scale (dequantizing integers)."""
        if self.dequantization is not None:
            return self.dequantization(batch, generator)
        return batch


def prepare_data(config):
    """
    Load and split the data set of ``config`` (already resolved).

    :rtype: PreparedData
    :raises ValueError: for a missing, unreadable or invalid data file.
    """
    dataset = Dataset(config.dataset)
    if dataset is Dataset.DIGITS:
        train, heldout = datasets.load_digits_split(seed=config.seed)
        train = train.reshape(len(train), -1)
        heldout = heldout.reshape(len(heldout), -1)
        dequantization = UniformDequantization.fit(train, datasets.NUM_DIGIT_LEVELS)
        return PreparedData(
            train, heldout, dequantization=dequantization, image_shape=(8, 8), example_shape=(8, 8)
        )
    if dataset is Dataset.SWISS_ROLL:
        generator = torch.Generator().manual_seed(config.seed)
        train = datasets.sample_swiss_roll(10000, config.noise, generator)
        heldout = datasets.sample_swiss_roll(2000, config.noise, generator)
        noise = config.noise
        return PreparedData(
            train, heldout, log_density=lambda x: datasets.swiss_roll_log_prob(x, noise)
        )
    if dataset is Dataset.HEARTBEAT:
        generator = torch.Generator().manual_seed(config.seed)
        train = datasets.sample_heartbeat(10000, generator)
        heldout = datasets.sample_heartbeat(1000, generator)
        truth = datasets.HEARTBEAT_LOG_LIKELIHOOD_BITS * math.log(2)
        activity = 0.2
        null_bits = train.shape[1] * (activity * math.log2(activity) + (1 - activity) * math.log2(1 - activity))
        return PreparedData(
            train,
            heldout,
            image_shape=(1, train.shape[1]),
            example_shape=(1, train.shape[1]),
            log_density=lambda x: torch.full((len(x),), truth, dtype=x.dtype),
            null_log_likelihood_bits=null_bits,
        )
    if dataset in IMAGE_DATASETS:
        return _prepare_images(config, dataset)
    if dataset in TORCHVISION_DATASETS:
        return _prepare_torchvision(config, dataset)
    array = datasets.load_array(config.data)
    example_shape = tuple(array.shape[1:])
    image_shape = example_shape if array.dim() == 3 else None
    array = array.reshape(len(array), -1).double()
    if config.levels is None and _looks_like_levels(array):
        logger.warning(
            "%s contains only small non-negative integers; pass --levels K to model them as integer "
            "levels 0..K-1 with uniform dequantization",
            config.data,
        )
    if len(array) < MIN_ARRAY_EXAMPLES:
        raise ValueError(
            f"{config.data} contains {len(array)} example(s): at least {MIN_ARRAY_EXAMPLES} are needed, "
            "because one in ten (at least one) is held out and the rest must vary"
        )
    generator = torch.Generator().manual_seed(config.seed)
    permutation = torch.randperm(len(array), generator=generator)
    num_heldout = max(1, len(array) // 10)
    heldout_raw = array[permutation[:num_heldout]]
    train_raw = array[permutation[num_heldout:]]
    if config.kernel == KernelKind.BINOMIAL.value:
        return _binary_array(config, array, train_raw, heldout_raw, image_shape, example_shape)
    if config.levels is not None:
        _check_levels(array, config.levels, config.data)
        train_levels = train_raw.long()
        return PreparedData(
            train_levels,
            heldout_raw.long(),
            dequantization=UniformDequantization.fit(train_levels, config.levels),
            image_shape=image_shape,
            example_shape=example_shape,
        )
    # float64, so that values near the float32 limits neither overflow nor underflow.
    center = train_raw.mean(0)
    scale = float((train_raw - center).pow(2).mean().sqrt())
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(
            f"the training split of {config.data} has variance {scale ** 2!r}: the data need "
            "finite, nonzero spread"
        )
    train = ((train_raw - center) / scale).float()
    heldout = ((heldout_raw - center) / scale).float()
    return PreparedData(
        train, heldout, image_shape=image_shape, center=center.float(), scale=scale, example_shape=example_shape
    )


def _prepare_images(config, dataset):
    """
    Draw the image data set as 8-bit gray levels ``[N, S * S]``, dequantized
    and scaled by one constant to variance 1 for the model, as digits are.
    """
    num_train, num_heldout = IMAGE_SPLIT_SIZES
    size = config.image_size
    generator = torch.Generator().manual_seed(config.seed)
    if dataset is Dataset.DEAD_LEAVES:
        # Two draws from one stream: the held-out images are independent of the training ones.
        train = datasets.sample_dead_leaves(num_train, size=size, generator=generator)
        heldout = datasets.sample_dead_leaves(num_heldout, size=size, generator=generator)
    else:
        # The held-out patches come from rows of each photograph that no training patch contains.
        train = datasets.sample_texture_patches(num_train, size=size, split="train", generator=generator)
        heldout = datasets.sample_texture_patches(num_heldout, size=size, split="heldout", generator=generator)

    def levels(images):
        # Gray values in [0, 1] to integers 0..255: k / 255 maps back to k exactly.
        return (images * (IMAGE_LEVELS - 1)).round().long().clamp(0, IMAGE_LEVELS - 1).reshape(len(images), -1)

    train, heldout = levels(train), levels(heldout)
    return PreparedData(
        train,
        heldout,
        dequantization=UniformDequantization.fit(train, IMAGE_LEVELS),
        image_shape=(size, size),
        example_shape=(1, size, size),
    )


def _prepare_torchvision(config, dataset):
    """
    Read a torchvision data set: all training images, and the first
    :data:`TORCHVISION_HELDOUT` test images held out, as 8-bit levels
    ``[N, C * H * W]`` dequantized and scaled by one constant to variance 1.
    """
    train, test = datasets.load_torchvision_split(dataset.value, config.data_root, config.download)
    example_shape = tuple(train.shape[1:])
    heldout = test[:TORCHVISION_HELDOUT]
    train = train.reshape(len(train), -1).long()
    heldout = heldout.reshape(len(heldout), -1).long()
    # One-channel images plot as [H, W]; color images keep [C, H, W].
    image_shape = example_shape[1:] if example_shape[0] == 1 else example_shape
    return PreparedData(
        train,
        heldout,
        dequantization=UniformDequantization.fit(train, IMAGE_LEVELS),
        image_shape=image_shape,
        example_shape=example_shape,
    )


def _binary_array(config, array, train, heldout, image_shape, example_shape):
    """Keep a binary array as it is, for the binomial kernel: no centering, no scaling."""
    if config.levels is not None:
        raise ValueError("levels applies to Gaussian kernels; the binomial kernel takes binary data as they are: drop it")
    bad = (array != 0) & (array != 1)
    if bad.any():
        raise ValueError(
            f"{config.data} contains {float(array[bad][0])!r}: the binomial kernel needs binary data (0 or 1)"
        )
    activity = float(train.mean().clamp(1e-6, 1 - 1e-6))
    null_bits = train.shape[1] * (activity * math.log2(activity) + (1 - activity) * math.log2(1 - activity))
    return PreparedData(
        train.float(),
        heldout.float(),
        image_shape=image_shape,
        example_shape=example_shape,
        null_log_likelihood_bits=null_bits,
    )


def _looks_like_levels(array):
    return bool((array == array.round()).all() and array.min() >= 0 and array.max() <= 255)


def _check_levels(array, levels, path):
    bad = (array != array.round()) | (array < 0) | (array >= levels)
    if bad.any():
        value = float(array[bad][0])
        raise ValueError(
            f"{path} contains {value!r}, which is not an integer level in 0..{levels - 1}: "
            "fix the data or raise --levels"
        )


def image_channels_shape(example_shape):
    """
    Return the ``(C, H, W)`` input shape of the convolutional network for examples of
    shape ``example_shape``: ``(H, W)`` images get one channel.

    :raises ValueError: if the examples are not images.
    """
    shape = tuple(example_shape) if example_shape is not None else ()
    if len(shape) == 2:
        return (1,) + shape
    if len(shape) == 3:
        return shape
    raise ValueError(
        f"the conv network needs images, examples of shape (H, W) or (C, H, W), but these data have "
        f"examples of shape {shape}: use --network mlp"
    )


def _network(config, dim, num_outputs, image_shape, time_conditioning="embedding"):
    if NetworkKind(config.network) is NetworkKind.UNET:
        from .nets import UNet

        channels_shape = image_channels_shape(image_shape if image_shape is not None else (dim,))
        return UNet(channels_shape, num_outputs, config.timesteps, channels=config.hidden_dim, dropout=config.dropout)
    if NetworkKind(config.network) is NetworkKind.CONV:
        channels_shape = image_channels_shape(image_shape if image_shape is not None else (dim,))
        if math.prod(channels_shape) != dim:
            raise ValueError(
                f"images of shape {channels_shape} have {math.prod(channels_shape)} values but the data "
                f"have {dim} per example"
            )
        return MultiScaleConvNet(
            channels_shape, num_outputs, config.timesteps, channels=config.hidden_dim, dropout=config.dropout
        )
    return MLP(
        dim,
        num_outputs * dim,
        config.timesteps,
        config.hidden_dim,
        config.num_blocks,
        time_conditioning=time_conditioning,
        dropout=config.dropout,
    )


def build_model(config, dim, decoder=None, image_shape=None):
    """
    Build the diffusion model of ``config`` (already resolved) for data of
    dimension ``dim``.

    :param tuple image_shape: the shape of one example before flattening,
        needed by the conv network.
    :rtype: DiffusionModel
    """
    if KernelKind(config.kernel) is KernelKind.BINOMIAL:
        forward = BinomialForward(num_steps=config.timesteps)
        net = _network(config, dim, 1, image_shape)
        # Runs saved before the prediction option existed used the flip kernel.
        prediction = config.prediction or BernoulliPrediction.FLIP.value
        reverse = BernoulliReverse(forward, net, (dim,), prediction=prediction)
        return DiffusionModel(forward, reverse, name="diffusion")
    kind, learned = parse_schedule(config.schedule)
    uses_beta_1 = kind in (ScheduleKind.PAPER, ScheduleKind.LOG_SNR)
    beta_1 = config.beta_1
    if beta_1 is None and isinstance(decoder, BinnedDecoder):
        bin_width = (decoder.high - decoder.low) / decoder.num_bins
        beta_1 = min(0.15, (FIRST_STEP_BINS * bin_width) ** 2)
    kwargs = {"beta_1": beta_1} if uses_beta_1 and beta_1 else {}
    schedule = (LearnedBetaSchedule if learned else BetaSchedule).from_name(kind, config.timesteps, **kwargs)
    forward = GaussianForward(schedule, event_dim=1)
    if KernelKind(config.kernel) is KernelKind.PAPER:
        net = _network(config, dim, 2, image_shape, time_conditioning="bumps")
        reverse = PaperReverse(forward, net, (dim,))
    else:
        learned_variance = ReverseVariance(config.variance) is ReverseVariance.LEARNED
        net = _network(config, dim, 2 if learned_variance else 1, image_shape)
        reverse = EpsilonReverse(forward, net, (dim,), config.variance)
    return DiffusionModel(forward, reverse, decoder=decoder, name="diffusion")


def _finite_or_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def _replace_from_temporary(path, write):
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates files readable by the owner only; run files are shared.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path, payload):
    """
    Write JSON atomically (a temporary file in the same folder, then a
    rename). Non-finite floats become ``null``, which strict JSON parsers accept.
    """

    def write(tmp):
        with open(tmp, "w") as handle:
            json.dump(_finite_or_none(payload), handle, indent=2, sort_keys=True, allow_nan=False)
            handle.write("\n")

    _replace_from_temporary(path, write)


def save_atomic(obj, path):
    """``torch.save`` to a temporary file in the same folder, then rename it into place."""
    _replace_from_temporary(path, lambda tmp: torch.save(obj, tmp))


def baseline_bits_per_dim(prepared):
    """Compute the per-pixel categorical baseline on the same split, for integer data."""
    if prepared.dequantization is None:
        return None
    return categorical_baseline_bits_per_dim(
        prepared.train, prepared.heldout, prepared.dequantization.num_levels
    )
