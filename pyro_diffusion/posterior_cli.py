"""
The ``inpaint`` and ``denoise`` commands: posterior sampling on held-out
images of a trained run, with a PNG figure and an ``.npz`` of the arrays.
"""

import enum
import math
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid, save_image

from .conditioning import MIN_NOISE_SCALE, Observation, product_sample, smc_sample
from .options import parse_option

__all__ = ["MaskKind", "Sampler", "add_posterior_commands", "image_mask", "run_posterior"]


class MaskKind(str, enum.Enum):
    """The region of each image that inpainting hides."""

    #: The bottom half of the rows.
    BOTTOM = "bottom"
    #: The top half of the rows.
    TOP = "top"
    #: The left half of the columns.
    LEFT = "left"
    #: The right half of the columns.
    RIGHT = "right"
    #: The central square of half the side.
    CENTER = "center"
    #: Half of the pixels, chosen at random per image.
    RANDOM = "random"


class Sampler(str, enum.Enum):
    """The posterior sampler."""

    #: The per-step product of Sohl-Dickstein et al. (2015), a heuristic.
    PRODUCT = "product"
    #: Sequential Monte Carlo over the reverse chain, exact as particles grow.
    SMC = "smc"


def image_mask(kind, num_images, height, width, generator=None):
    """
    Build the observation mask of ``num_images`` images, ``True`` where a
    pixel is observed and ``False`` where inpainting hides it.

    :param kind: a :class:`MaskKind` or its name.
    :returns: boolean tensor of shape ``[N, H, W]``.
    """
    kind = parse_option(MaskKind, kind, "mask")
    hidden = torch.zeros(num_images, height, width, dtype=torch.bool)
    if kind is MaskKind.BOTTOM:
        hidden[:, height // 2 :] = True
    elif kind is MaskKind.TOP:
        hidden[:, : (height + 1) // 2] = True
    elif kind is MaskKind.LEFT:
        hidden[:, :, : (width + 1) // 2] = True
    elif kind is MaskKind.RIGHT:
        hidden[:, :, width // 2 :] = True
    elif kind is MaskKind.CENTER:
        top, left = height // 4, width // 4
        hidden[:, top : top + max(1, height // 2), left : left + max(1, width // 2)] = True
    else:
        hidden = torch.rand(num_images, height, width, generator=generator) < 0.5
    return ~hidden


def add_posterior_commands(commands, add_threads_option):
    """Add ``inpaint`` and ``denoise`` to the command line's subparsers."""
    inpaint = commands.add_parser("inpaint", help="fill a hidden region of held-out images from a trained run")
    inpaint.add_argument(
        "--mask", default="bottom", help="the hidden region: bottom (default), top, left, right, center or random"
    )
    denoise = commands.add_parser("denoise", help="remove Gaussian noise from held-out images of a trained run")
    denoise.add_argument(
        "--sigma",
        type=float,
        required=True,
        help="the noise's standard deviation on the model's scale, where the data have variance 1",
    )
    for parser in (inpaint, denoise):
        parser.add_argument("run_dir", help="an image run folder written by 'pyro-diffusion train'")
        parser.add_argument("--sampler", default="smc", help="smc (default, exact as --particles grows) or product")
        parser.add_argument("--particles", type=int, default=64, help="SMC particles per image")
        parser.add_argument("--num-images", type=int, default=8, help="the number of held-out images")
        parser.add_argument("--seed", type=int, default=0, help="the seed of the noise, the mask and the sampler")
        parser.add_argument(
            "--out", default=None, help="the PNG to write (default: RUN_DIR/COMMAND.png); the arrays go beside it as .npz"
        )
        add_threads_option(parser)


def _grid(rows, levels, shape):
    images = torch.cat(rows).float().reshape((-1,) + tuple(shape))
    images = images / (levels - 1) if levels else (images - images.min()) / (images.max() - images.min() + 1e-12)
    images = images.repeat_interleave(4, -1).repeat_interleave(4, -2)
    return make_grid(images.clamp(0, 1), nrow=len(rows[0]), padding=2, pad_value=0.5)


def run_posterior(args, load_run, usage_error):
    """
    Run ``inpaint`` or ``denoise``: condition the run's model on held-out
    images and write the figure and the arrays.

    :param args: the parsed command line.
    :param load_run: the command line's run loader, ``run_dir -> (checkpoint, config, model, data)``.
    :param usage_error: the exception class for bad input.
    :returns: the exit status.
    """
    sampler = parse_option(Sampler, args.sampler, "sampler")
    if args.particles < 1:
        raise usage_error(f"--particles must be >= 1, got {args.particles}")
    if args.num_images < 1:
        raise usage_error(f"--num-images must be >= 1, got {args.num_images}")
    if args.command == "denoise" and not (args.sigma > 0 and math.isfinite(args.sigma)):
        raise usage_error(f"--sigma must be a finite number > 0, got {args.sigma}")
    if args.command == "denoise" and args.sigma < MIN_NOISE_SCALE:
        raise usage_error(
            f"--sigma {args.sigma} is below {MIN_NOISE_SCALE}, where the Gaussian factors overflow: "
            "use inpaint to observe pixels exactly"
        )
    if args.command == "inpaint":
        parse_option(MaskKind, args.mask, "mask")
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise usage_error(f"run folder {run_dir} not found: pass a folder written by 'pyro-diffusion train'")
    png_path = Path(args.out) if args.out else run_dir / f"{args.command}.png"
    if png_path.suffix.lower() != ".png":
        raise usage_error(f"--out {png_path} must end in .png (the arrays go beside it as .npz)")
    if not png_path.parent.is_dir():
        raise usage_error(f"--out {png_path}: the folder {png_path.parent} does not exist")
    _, _, diffusion, data = load_run(run_dir)
    if data.image_shape is None:
        raise usage_error(
            f"{run_dir} was not trained on images: {args.command} needs an image run (digits, dead-leaves, "
            "textures, mnist, fashion-mnist, cifar10 or an array of images)"
        )

    generator = torch.Generator().manual_seed(args.seed)
    truth = data.heldout[: args.num_images]
    clean = data.model_scale(truth, generator)
    height, width = data.image_shape[-2:]
    channels = clean.shape[1] // (height * width)
    if args.command == "inpaint":
        # Every channel of a hidden pixel is hidden.
        mask = image_mask(args.mask, len(truth), height, width, generator).unsqueeze(1)
        mask = mask.expand(len(truth), channels, height, width).reshape(clean.shape)
        observation = Observation(clean, mask)
    else:
        mask = torch.ones_like(clean, dtype=torch.bool)
        noisy = clean + args.sigma * torch.randn(clean.shape, generator=generator)
        observation = Observation(noisy, mask, args.sigma)

    if sampler is Sampler.PRODUCT:
        samples = product_sample(diffusion, observation, generator)
    else:
        result = smc_sample(diffusion, observation, args.particles, generator)
        # One posterior draw per image: a particle chosen by its weight.
        chosen = torch.multinomial(result.log_weights.exp(), 1, generator=generator).squeeze(-1)
        samples = result.particles[torch.arange(len(truth)), chosen]

    shown_observed = torch.where(observation.mask, observation.values, torch.zeros_like(observation.values))
    observed_units = data.to_data_units(shown_observed)
    sample_units = data.to_data_units(samples)
    truth_units = data.to_data_units(clean)
    levels = data.dequantization.num_levels if data.dequantization else None
    figure = _grid([observed_units, sample_units, truth_units], levels, (channels, height, width))
    save_image(figure, png_path)
    npz_path = png_path.with_suffix(".npz")
    np.savez(
        npz_path,
        observed_model_scale=observation.values.numpy(),
        mask=observation.mask.numpy(),
        samples=sample_units.numpy(),
        truth=truth_units.numpy(),
        sigma=np.float64(args.sigma if args.command == "denoise" else 0.0),
    )
    print(
        f"{args.command}: {len(truth)} held-out images with the {sampler.value} sampler; figure (rows: observed, "
        f"samples, truth): {png_path}; arrays: {npz_path}"
    )
    return 0
