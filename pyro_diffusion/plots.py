"""
PNG figures of samples beside held-out data, drawn with torchvision.
"""

import torch
from torchvision.utils import make_grid, save_image

__all__ = ["save_image_comparison", "save_scatter_comparison"]


def save_image_comparison(samples, heldout, path, num_levels=None, nrow=8, upscale=4):
    """
    Save two grids side by side: model samples on the left, held-out
    examples on the right, each with the same number of images (at most
    ``nrow * nrow``).

    :param torch.Tensor samples: ``[N, H, W]``, or ``[N, C, H, W]`` with
        ``C`` = 1 or 3.
    :param torch.Tensor heldout: ``[M, H, W]`` or ``[M, C, H, W]``.
    :param int num_levels: the number of integer levels, to map levels to
        ``[0, 1]``; continuous data are min-max scaled together.
    """
    count = min(len(samples), len(heldout), nrow * nrow)
    images = [samples[:count].float(), heldout[:count].float()]
    if num_levels is not None:
        images = [x / (num_levels - 1) for x in images]
    else:
        low = min(float(x.min()) for x in images)
        high = max(float(x.max()) for x in images)
        images = [(x - low) / max(high - low, 1e-12) for x in images]
    grids = []
    for x in images:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        x = x.repeat_interleave(upscale, -1).repeat_interleave(upscale, -2)
        grids.append(make_grid(x, nrow=min(nrow, count), padding=2, pad_value=0.5))
    gap = torch.full((3, grids[0].shape[1], 8), 1.0)
    save_image(torch.cat([grids[0], gap, grids[1]], dim=-1), path)


def _histogram(points, bounds, size):
    low, high = bounds
    index = ((points - low) / (high - low) * (size - 1)).round().long()
    inside = ((index >= 0) & (index < size)).all(-1)
    index = index[inside]
    image = torch.zeros(size, size)
    image.index_put_((size - 1 - index[:, 1], index[:, 0]), torch.ones(len(index)), accumulate=True)
    return (image / image.max().clamp(min=1)).sqrt()


def save_scatter_comparison(samples, heldout, path, size=256):
    """
    Save two 2-D point densities side by side (samples left, held-out right),
    darker where more points fall.

    :param torch.Tensor samples: ``[N, 2]``.
    :param torch.Tensor heldout: ``[M, 2]``.
    """
    # The held-out data set the range, so stray samples cannot shrink the
    # data to a dot; samples outside it are left out of the picture.
    finite = heldout[torch.isfinite(heldout).all(-1)]
    bound = float(finite.abs().max()) * 1.05 if len(finite) else 1.0
    panels = [1 - _histogram(x, (-bound, bound), size) for x in (samples, heldout)]
    gap = torch.full((size, 8), 0.5)
    save_image(torch.cat([panels[0], gap, panels[1]], dim=-1).unsqueeze(0), path)
