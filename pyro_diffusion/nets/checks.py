"""
Input checks shared by the networks: the time steps of every network, and
the shapes of the image networks, which take each image flattened to a row
of ``C * H * W`` values.
"""

import numbers

import torch

from pyro.poutine.util import is_validation_enabled

__all__ = ["check_flat_images", "check_image_shape", "time_steps"]


def time_steps(network, t, num_steps, x):
    """
    Turn ``t`` into an integer tensor on ``x``'s device and check that it
    broadcasts to the examples of ``x``. While Pyro's validation is enabled,
    also check that every step lies in ``1..num_steps``. That check reads
    the values back from the device, so it follows :func:`pyro.enable_validation`.

    :param str network: the network's name, used in the messages.
    :param t: an int or an integer tensor of time steps.
    :param int num_steps: ``T``.
    :param torch.Tensor x: the network's input.
    :returns: ``t`` as a tensor.
    :raises ValueError: naming the dtype, the shape or the first step out of range.
    """
    t = torch.as_tensor(t, device=x.device)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{network} takes integer time steps, got a tensor of dtype {t.dtype}: pass t.long()")
    batch_shape = x.shape[:-1]
    try:
        fits = torch.broadcast_shapes(t.shape, batch_shape) == batch_shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(
            f"{network} takes one time step per example, shape {list(batch_shape)}, or one shared step, "
            f"shape [1] or []; got t of shape {list(t.shape)} for input of shape {list(x.shape)}"
        )
    if is_validation_enabled() and t.numel() > 0:
        bad = (t < 1) | (t > num_steps)
        if bad.any():
            value = int(t[bad].flatten()[0])
            raise ValueError(
                f"{network} was built for time steps 1..{num_steps} but got t = {value}: "
                f"build it with num_steps equal to the model's T"
            )
    return t


def check_image_shape(image_shape, network):
    """
    Check that ``image_shape`` is ``(C, H, W)``, three positive integers.

    :param image_shape: the shape to check.
    :param str network: the network's name, used in the message.
    :returns: the shape as a tuple of ints.
    :raises ValueError: naming the shape.
    """
    message = (
        f"invalid image_shape for {network}: expected (channels, height, width), "
        f"three positive integers, got {image_shape!r}"
    )
    try:
        sizes = tuple(image_shape)
    except TypeError:
        raise ValueError(message) from None
    if len(sizes) != 3:
        raise ValueError(message)
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
            raise ValueError(message)
    return tuple(int(size) for size in sizes)


def check_flat_images(network, image_shape, x):
    """
    Check that ``x`` is ``[N, C * H * W]``. :func:`time_steps` checks ``t``.

    :param str network: the network's name, used in the messages.
    :param tuple image_shape: ``(C, H, W)``.
    :raises ValueError: naming the shape received and the shape expected.
    """
    data_dim = image_shape[0] * image_shape[1] * image_shape[2]
    if x.dim() != 2 or x.shape[-1] != data_dim:
        if x.dim() == 4:
            hint = "flatten each image with x.reshape(N, -1)"
        else:
            hint = "pass one flattened image per row"
        raise ValueError(
            f"{network} was built for images of shape {image_shape}, "
            f"{data_dim} values per example, but got input of shape {tuple(x.shape)}: "
            f"the input must have shape [N, {data_dim}], so {hint}"
        )
