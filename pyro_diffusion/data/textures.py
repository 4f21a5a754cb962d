"""Square patches cut from grayscale texture photographs bundled with scikit-image.

The photographs are ``skimage.data.brick()``, ``skimage.data.grass()`` and
``skimage.data.gravel()``: 512 x 512 uint8 images released under CC0. scikit-image
installs their PNG files with the package (checked with scikit-image 0.26.0), so
loading them needs no network access. They stand in for the bark textures of
Sohl-Dickstein et al. (2015).

Train/held-out split: in every photograph the top three quarters of the rows
(rows ``0..383`` of 512) form the training region and the bottom quarter (rows
``384..511``) forms the held-out region. A patch lies entirely inside one region, so
no held-out pixel ever appears in a training patch. Patches of the two splits can
come from adjacent rows, so the regions share texture statistics but no pixels.
"""

import functools
import logging
import operator

import numpy
import torch

logger = logging.getLogger(__name__)

__all__ = [
    "TEXTURE_NAMES",
    "TEXTURE_SPLITS",
    "crop_texture_patches",
    "load_texture",
    "sample_texture_patches",
    "texture_split_rows",
]

#: Names of the bundled photographs, each a function of ``skimage.data``.
TEXTURE_NAMES = ("brick", "grass", "gravel")

#: Names of the two row regions of each photograph.
TEXTURE_SPLITS = ("train", "heldout")

# Fraction of each photograph's rows, counted from the bottom, in the held-out region.
_HELDOUT_ROW_FRACTION = 0.25


def _validate_texture_name(name: str) -> str:
    if name not in TEXTURE_NAMES:
        raise ValueError(f"texture {name!r} is unknown: choose one of {', '.join(map(repr, TEXTURE_NAMES))}.")
    return name


def _validate_split(split: str) -> str:
    if split not in TEXTURE_SPLITS:
        raise ValueError(f"split={split!r} is invalid: pass split='train' or split='heldout'.")
    return split


def _validate_patch_size(size: int) -> int:
    if isinstance(size, bool):
        raise ValueError(f"size={size!r} is invalid: pass an integer patch side >= 1.")
    try:
        size = operator.index(size)
    except TypeError:
        raise ValueError(f"size={size!r} is invalid: pass an integer patch side >= 1.") from None
    if size < 1:
        raise ValueError(f"size={size} is invalid: pass an integer patch side >= 1.")
    return size


@functools.lru_cache(maxsize=None)
def _load_texture_array(name: str) -> numpy.ndarray:
    from skimage import data as skimage_data

    image = getattr(skimage_data, name)()
    if image.ndim != 2 or image.dtype != numpy.uint8:
        raise RuntimeError(
            f"skimage.data.{name}() returned an array of shape {image.shape} and dtype {image.dtype}, "
            f"but a 2-D uint8 grayscale image is expected: check the installed scikit-image."
        )
    image = numpy.ascontiguousarray(image)
    image.setflags(write=False)
    logger.debug("load_texture: read skimage.data.%s(), shape %s", name, image.shape)
    return image


def load_texture(name: str) -> torch.Tensor:
    """Load one bundled photograph, reading it from disk only once per process.

    :param name: one of :data:`TEXTURE_NAMES`.
    :returns: the photograph as a uint8 tensor of shape ``[H, W]`` (``[512, 512]`` for
        all three). It is a fresh copy, so changing it does not change the cache.
    :raises ValueError: if ``name`` is unknown.
    """
    return torch.from_numpy(_load_texture_array(_validate_texture_name(name)).copy())


def texture_split_rows(name: str, split: str) -> tuple[int, int]:
    r"""Return the rows ``[start, stop)`` of a photograph that belong to a split.

    With :math:`H` rows, the held-out region is the last
    :math:`\lfloor H / 4 \rfloor` rows and the training region is every row above it:

    .. math::

        \text{train} = [0,\ H - \lfloor H/4 \rfloor), \qquad
        \text{heldout} = [H - \lfloor H/4 \rfloor,\ H).

    For the 512-row photographs this is ``(0, 384)`` and ``(384, 512)``. Every column
    belongs to both regions.

    :param name: one of :data:`TEXTURE_NAMES`.
    :param split: ``"train"`` or ``"heldout"``.
    :returns: ``(start, stop)`` row indices.
    :raises ValueError: if ``name`` or ``split`` is invalid.
    """
    height = _load_texture_array(_validate_texture_name(name)).shape[0]
    boundary = height - int(height * _HELDOUT_ROW_FRACTION)
    if _validate_split(split) == "train":
        return 0, boundary
    return boundary, height


def crop_texture_patches(image: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor, size: int) -> torch.Tensor:
    """Cut square patches from one image at given top-left corners.

    Patch ``n`` is ``image[rows[n] : rows[n] + size, columns[n] : columns[n] + size]``.

    :param image: image of shape ``[H, W]``, any dtype.
    :param rows: top rows of shape ``[N]``, integer, in ``0..H - size``.
    :param columns: left columns of shape ``[N]``, integer, in ``0..W - size``.
    :param size: patch side :math:`S` in pixels, at least 1.
    :returns: patches of shape ``[N, S, S]`` with the dtype of ``image``.
    :raises ValueError: if ``image`` is not 2-D, ``size`` < 1, the corner tensors do not
        have matching shape ``[N]`` or a patch would extend past the image.
    """
    size = _validate_patch_size(size)
    if image.dim() != 2:
        raise ValueError(
            f"image has shape {list(image.shape)} but crop_texture_patches expects [H, W]: "
            f"pass one 2-D grayscale image."
        )
    if rows.dim() != 1 or rows.shape != columns.shape:
        raise ValueError(
            f"rows has shape {list(rows.shape)} and columns has shape {list(columns.shape)}, "
            f"but both must have the same shape [N]: pass one row and one column per patch."
        )
    height, width = image.shape
    if rows.numel() > 0:
        if int(rows.min()) < 0 or int(rows.max()) > height - size:
            raise ValueError(
                f"rows span {int(rows.min())}..{int(rows.max())} but patches of size {size} fit only "
                f"at rows 0..{height - size} of an image with {height} rows: pass rows in that range."
            )
        if int(columns.min()) < 0 or int(columns.max()) > width - size:
            raise ValueError(
                f"columns span {int(columns.min())}..{int(columns.max())} but patches of size {size} fit "
                f"only at columns 0..{width - size} of an image with {width} columns: pass columns in "
                f"that range."
            )

    offsets = torch.arange(size)
    row_index = rows.long()[:, None, None] + offsets[None, :, None]
    column_index = columns.long()[:, None, None] + offsets[None, None, :]
    return image[row_index, column_index]


def sample_texture_patches(
    num_patches: int,
    size: int = 16,
    split: str = "train",
    textures: tuple[str, ...] | str = TEXTURE_NAMES,
    generator: torch.Generator | None = None,
    return_positions: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Draw square patches at uniformly random positions inside one split region.

    Each patch first picks a photograph uniformly from ``textures`` and then a top-left
    corner uniformly among the positions where the whole patch fits in the split's rows
    ``[start, stop)`` (see :func:`texture_split_rows`):

    .. math::

        t \sim \mathrm{Uniform}\{0..T-1\}, \quad
        i \sim \mathrm{Uniform}\{\text{start}..\text{stop} - S\}, \quad
        j \sim \mathrm{Uniform}\{0..W - S\}, \quad
        x = \text{photo}_t[i : i + S,\ j : j + S] / 255.

    A name listed twice in ``textures`` is drawn twice as often.

    :param num_patches: number of patches :math:`N`, at least 1.
    :param size: patch side :math:`S` in pixels, at least 1 and at most the height of
        the split region (384 rows for ``"train"``, 128 for ``"heldout"``).
    :param split: ``"train"`` or ``"heldout"``.
    :param textures: names from :data:`TEXTURE_NAMES` to draw from, or a single name.
    :param generator: CPU random number generator. The same seed gives the same
        patches. ``None`` uses the global PyTorch generator.
    :param return_positions: if true, also return where each patch was cut.
    :returns: patches of shape ``[N, 1, S, S]``, float32, with values ``k / 255`` for
        integers ``k`` in ``0..255``. With ``return_positions``, a pair
        ``(patches, positions)`` where ``positions`` has shape ``[N, 3]``, long, and
        row ``n`` contains ``(t, i, j)``: the index of the photograph in ``textures`` and
        the top-left row and column of the patch in that photograph.
    :raises ValueError: if ``num_patches`` < 1, ``size`` < 1 or larger than a split
        region, ``split`` is invalid, ``textures`` is empty or a name is unknown.
    """
    if isinstance(num_patches, bool):
        raise ValueError(f"num_patches={num_patches!r} is invalid: pass an integer >= 1.")
    try:
        num_patches = operator.index(num_patches)
    except TypeError:
        raise ValueError(f"num_patches={num_patches!r} is invalid: pass an integer >= 1.") from None
    if num_patches < 1:
        raise ValueError(f"num_patches={num_patches} is invalid: pass an integer >= 1.")
    size = _validate_patch_size(size)
    split = _validate_split(split)
    if isinstance(textures, str):
        textures = (textures,)
    textures = tuple(textures)
    if not textures:
        raise ValueError(f"textures is empty: pass one or more of {', '.join(map(repr, TEXTURE_NAMES))}.")
    for name in textures:
        _validate_texture_name(name)

    regions = []
    for name in textures:
        start, stop = texture_split_rows(name, split)
        width = _load_texture_array(name).shape[1]
        if size > stop - start or size > width:
            raise ValueError(
                f"size={size} is too large: the {split!r} region of texture {name!r} has "
                f"{stop - start} rows and {width} columns, so pass size <= {min(stop - start, width)}."
            )
        regions.append((start, stop, width))

    texture_index = torch.randint(0, len(textures), (num_patches,), generator=generator)
    row_u = torch.rand(num_patches, generator=generator, dtype=torch.float64)
    column_u = torch.rand(num_patches, generator=generator, dtype=torch.float64)

    patches = torch.empty(num_patches, size, size, dtype=torch.uint8)
    rows = torch.empty(num_patches, dtype=torch.long)
    columns = torch.empty(num_patches, dtype=torch.long)
    for index, (name, (start, stop, width)) in enumerate(zip(textures, regions)):
        chosen = torch.nonzero(texture_index == index).squeeze(1)
        if chosen.numel() == 0:
            continue
        # floor(u * n) with u in [0, 1) is uniform on 0..n-1.
        num_rows = stop - start - size + 1
        num_columns = width - size + 1
        rows[chosen] = start + torch.floor(row_u[chosen] * num_rows).long().clamp_(max=num_rows - 1)
        columns[chosen] = torch.floor(column_u[chosen] * num_columns).long().clamp_(max=num_columns - 1)
        image = torch.from_numpy(_load_texture_array(name).copy())
        patches[chosen] = crop_texture_patches(image, rows[chosen], columns[chosen], size)

    logger.debug(
        "sample_texture_patches: %d %s patches of %dx%d from %s", num_patches, split, size, size, ", ".join(textures)
    )
    patches = (patches.to(torch.float32) / 255.0).unsqueeze(1)
    if return_positions:
        return patches, torch.stack([texture_index, rows, columns], dim=1)
    return patches
