"""
Checks shared by the image networks, which take each image flattened to a
row of ``C * H * W`` values.
"""

import numbers

__all__ = ["check_flat_images", "check_image_shape"]


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


def check_flat_images(network, image_shape, x, t):
    """
    Check that ``x`` is ``[N, C * H * W]`` and that ``t`` has one step per
    example (``[N]``) or one shared step (``[1]`` or ``[]``).

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
    if t.dim() > 1 or (t.dim() == 1 and t.shape[0] not in (1, x.shape[0])):
        raise ValueError(
            f"invalid t for {network}: expected one time step per example, shape "
            f"[{x.shape[0]}], or one shared step, shape [1] or [], but got shape "
            f"{tuple(t.shape)}"
        )
