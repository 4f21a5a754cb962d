"""Loading and validation of user data arrays with examples along the first axis."""

import logging
import os
from pathlib import Path

import numpy
import torch

logger = logging.getLogger(__name__)

ALLOWED_SUFFIXES = (".npy", ".pt")

# numpy dtype kinds accepted by load_array: bool, signed and unsigned integer, float.
_NUMERIC_NUMPY_KINDS = frozenset("biuf")

# torch dtypes accepted by load_array. Complex, quantized and float8 tensors are rejected.
_REAL_TORCH_DTYPES = frozenset(
    {torch.bool, torch.uint8, torch.uint16, torch.uint32, torch.uint64}
    | {torch.int8, torch.int16, torch.int32, torch.int64}
    | {torch.float16, torch.bfloat16, torch.float32, torch.float64}
)


def _check_shape(shape: torch.Size | tuple[int, ...], name: str) -> None:
    if len(shape) < 2:
        raise ValueError(
            f"{name} has shape {list(shape)} but the data must have shape [N, ...]: "
            f"add a feature axis, e.g. x[:, None]."
        )
    if shape[0] == 0:
        raise ValueError(f"{name} has shape {list(shape)} with zero examples: pass at least one example.")
    if any(size == 0 for size in shape[1:]):
        raise ValueError(
            f"{name} has shape {list(shape)} with zero entries per example: "
            f"every axis after the first must have size >= 1."
        )


def _check_finite(x: torch.Tensor, name: str) -> None:
    non_finite = ~torch.isfinite(x)
    num_non_finite = int(non_finite.sum())
    if num_non_finite == 0:
        return

    num_nan = int(torch.isnan(x).sum())
    first_index = tuple(torch.nonzero(non_finite)[0].tolist())
    raise ValueError(
        f"{name} contains {num_non_finite} non-finite values ({num_nan} NaN, "
        f"{num_non_finite - num_nan} infinite), the first at index {first_index}: "
        f"remove or impute those examples."
    )


def validate_data(x: torch.Tensor, name: str = "data") -> torch.Tensor:
    """Check that ``x`` is a usable continuous data tensor and return it unchanged.

    The checks are: ``x`` is a dense ``torch.Tensor`` with a real floating dtype, it has
    shape ``[N, ...]`` with :math:`N \\ge 1` and at least two axes, no axis is empty,
    and every value is finite.

    :param x: data of shape ``[N, ...]``, examples along the first axis.
    :param name: name of the data used in error messages, e.g. a file path.
    :returns: ``x`` itself, not a copy.
    :raises ValueError: if any check fails. The message names the value and the fix.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(
            f"{name} is a {type(x).__name__}, not a torch.Tensor: convert it with torch.as_tensor(x, dtype=torch.float32)."
        )
    if x.layout != torch.strided:
        raise ValueError(f"{name} has layout {x.layout} but a dense tensor is expected: convert it with x.to_dense().")
    if x.is_complex():
        raise ValueError(f"{name} has complex dtype {x.dtype}: pass real data, e.g. torch.view_as_real(x).")
    if not x.is_floating_point():
        raise ValueError(f"{name} has dtype {x.dtype} but a floating dtype is expected: convert it with x.float().")
    _check_shape(x.shape, name)
    _check_finite(x, name)
    return x


def _read_npy(path: Path) -> torch.Tensor:
    # Corrupt .npy files raise ValueError, EOFError, OSError or tokenize.TokenError from the
    # header parser, so every exception of the read is turned into one message.
    try:
        array = numpy.load(path, allow_pickle=False)
    except Exception as error:
        raise ValueError(
            f"failed to read {path} as a .npy array ({type(error).__name__}: {error}): "
            f"write the data with numpy.save(path, array) using a numeric dtype."
        ) from error

    if not isinstance(array, numpy.ndarray):
        if hasattr(array, "close"):
            array.close()
        raise ValueError(
            f"{path} contains a {type(array).__name__}, not a single array (an .npz archive "
            f"saved under a .npy name?): write one array with numpy.save(path, array)."
        )
    if array.dtype.kind not in _NUMERIC_NUMPY_KINDS:
        raise ValueError(
            f"{path} has non-numeric dtype {array.dtype}: save a bool, integer or real "
            f"floating array, e.g. array.astype(numpy.float32)."
        )

    _check_shape(array.shape, str(path))
    if array.dtype.kind != "f":
        # Bool and integer values are always finite. Integers above 2**24 in magnitude
        # are rounded to the nearest float32.
        return torch.from_numpy(array.astype(numpy.float32))
    if array.dtype.itemsize > 8:
        # torch has no long double, so it is narrowed to float64 first.
        array = array.astype(numpy.float64)
    # torch.from_numpy accepts only native byte order.
    return torch.from_numpy(array.astype(array.dtype.newbyteorder("="), copy=False))


def _read_pt(path: Path) -> torch.Tensor:
    # torch.load raises RuntimeError, pickle.UnpicklingError, EOFError, KeyError, IndexError or
    # UnicodeDecodeError on corrupt files (PyTorch 2.14), so every exception of the read is
    # turned into one message.
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"failed to read {path} with torch.load(weights_only=True) ({type(error).__name__}: {error}): "
            f"write one tensor with torch.save(tensor, path)."
        ) from error

    if not isinstance(loaded, torch.Tensor):
        description = type(loaded).__name__
        if isinstance(loaded, dict):
            keys = list(loaded)[:5]
            description = f"dict with keys {keys}" + (" ..." if len(loaded) > 5 else "")
        raise ValueError(
            f"{path} contains a {description}, not a tensor: save the data tensor itself, "
            f"e.g. torch.save(state['x'], path)."
        )
    if loaded.dtype not in _REAL_TORCH_DTYPES:
        raise ValueError(
            f"{path} has dtype {loaded.dtype}: save a bool, integer or real floating "
            f"tensor, e.g. tensor.float()."
        )
    if loaded.layout != torch.strided:
        raise ValueError(f"{path} has layout {loaded.layout} but a dense tensor is expected: save tensor.to_dense().")

    _check_shape(loaded.shape, str(path))
    tensor = loaded.detach()
    if not tensor.is_floating_point():
        # Bool and integer values are always finite. Integers above 2**24 in magnitude
        # are rounded to the nearest float32.
        tensor = tensor.to(torch.float32)
    return tensor


def load_array(path: str | os.PathLike) -> torch.Tensor:
    """Load a user's data array from a ``.npy`` or ``.pt`` file as float32.

    ``.npy`` files are read with ``numpy.load(path, allow_pickle=False)`` and ``.pt``
    files with ``torch.load(path, map_location="cpu", weights_only=True)``, so neither
    runs pickled code. A ``.pt`` file must contain one tensor. Bool, integer and real
    floating dtypes are accepted and converted to float32.

    :param path: path of the file, with suffix ``.npy`` or ``.pt`` (any letter case).
    :returns: tensor of shape ``[N, ...]``, float32, on the CPU, examples along the first axis.
    :raises ValueError: if the file is missing, has another suffix or cannot be read.
        Also if it does not contain exactly one array or tensor, or if that has a
        non-numeric or complex dtype, fewer than two axes, zero examples, or NaN or
        infinite values (before or after conversion to float32). The message names the
        path and the fix.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"data file {path} not found: check the path (relative paths start at {Path.cwd()}).")
    if not path.is_file():
        raise ValueError(f"{path} is not a file: pass the path of a .npy or .pt file.")

    suffix = path.suffix.lower()
    if suffix == ".npy":
        tensor = _read_npy(path)
    elif suffix == ".pt":
        tensor = _read_pt(path)
    else:
        raise ValueError(
            f"{path} has unsupported suffix {suffix!r}: allowed suffixes are {', '.join(ALLOWED_SUFFIXES)}. "
            f"Save the data with numpy.save (.npy) or torch.save (.pt)."
        )

    _check_finite(tensor, str(path))
    converted = tensor.to(torch.float32).contiguous()
    if converted is not tensor:
        overflow = ~torch.isfinite(converted)
        if overflow.any():
            first_index = tuple(torch.nonzero(overflow)[0].tolist())
            raise ValueError(
                f"{path} has {int(overflow.sum())} values beyond the float32 range (about 3.4e38), "
                f"the first at index {first_index}: rescale the data."
            )

    logger.info("Loaded %s: shape %s", path, list(converted.shape))
    return validate_data(converted, str(path))
