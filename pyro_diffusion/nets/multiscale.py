r"""
The multi-scale convolutional reverse network for images of Sohl-Dickstein
et al. (2015), Appendix D of [1].

The network maps a noisy image :math:`x_t` and its time step ``t`` to
``num_outputs`` images of the same shape, such as the :math:`z_\mu` and
:math:`z_\Sigma` of :class:`~pyro_diffusion.reverse.PaperReverse` or the
predicted noise of :class:`~pyro_diffusion.reverse.EpsilonReverse`. It has
three parts:

1. ``num_conv_layers`` multi-scale convolution layers. Each layer builds a
   pyramid of its input by repeated 2x2 mean pooling, so scale ``s`` is
   ``2**s`` times coarser, for ``s = 0 .. num_scales - 1``. It applies a
   separate 3x3 convolution at every scale, upsamples each result back to
   full resolution by nearest-neighbour repetition, averages the scales and
   applies the soft ReLU :math:`\log(1 + e^z)`.
2. ``dense_layers`` per-pixel dense layers (1x1 convolutions) with the same
   soft ReLU.
3. A 1x1 readout that gives, for every pixel, ``num_bumps`` sets of
   ``num_outputs * C`` coefficients :math:`y_{j}`. The output is their mix
   :math:`\sum_j g_j(t)\, y_j` with the normalized Gaussian bumps
   :math:`g_j(t)` of :class:`~pyro_diffusion.nets.temporal.GaussianBumps`.

The time step enters only through :math:`g_j(t)`, so the convolutional body
is shared by all steps. The readout starts at zero, so a new network outputs
zeros and the reverse kernel starts at its reference value.

Every 3x3 convolution pads with one ring of zeros, so the spatial size is
kept. Pooling uses ceil mode, so images whose height or width is not
divisible by ``2**(num_scales - 1)`` are accepted. The last pooling window
of such a row or column averages only the pixels that exist, and the
upsampled result is cropped back to the finer size. Away from the borders the network
is equivariant to shifts by multiples of ``2**(num_scales - 1)`` pixels,
the period of the coarsest pooling grid.

The code released with [1], file ``regression.py`` of [2], differs in
three ways. It applies a leaky ReLU after each scale's convolution rather
than one soft ReLU after the scales are combined, as [1] describes and as
this module does. Its dense layers also use the leaky ReLU, where this
module uses the soft ReLU. It can add a fully connected path over the whole
image beside the convolutions, which this module omits, so every output
depends only on a bounded neighbourhood of its pixel.

References

[1] J. Sohl-Dickstein et al., "Deep Unsupervised Learning using
    Nonequilibrium Thermodynamics", 2015, Appendix D.
[2] https://github.com/Sohl-Dickstein/Diffusion-Probabilistic-Models
"""

import numbers

import torch
from torch import nn
from torch.nn import functional as F

from .checks import check_flat_images, check_image_shape, time_steps
from .temporal import GaussianBumps

__all__ = ["MultiScaleConvNet"]


def _pool_by_two(h):
    """Mean-pool ``[N, K, H, W]`` by two in ceil mode, giving ``[N, K, ceil(H/2), ceil(W/2)]``."""
    return F.avg_pool2d(h, kernel_size=2, stride=2, ceil_mode=True)


def _upsample_by_two(h, size):
    """
    Repeat every pixel of ``[N, K, h, w]`` into a 2x2 block and crop the
    result to ``size = (H, W)``, with ``H <= 2h`` and ``W <= 2w``.
    """
    h = F.interpolate(h, scale_factor=2, mode="nearest")
    return h[..., : size[0], : size[1]]


class _MultiScaleConv(nn.Module):
    """One multi-scale convolution layer: ``[N, K_in, H, W] -> [N, K_out, H, W]``."""

    def __init__(self, in_channels, out_channels, num_scales):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
            for _ in range(num_scales)
        )

    def forward(self, h):
        pyramid = [h]
        for _ in range(len(self.convs) - 1):
            pyramid.append(_pool_by_two(pyramid[-1]))

        # Accumulating from the coarsest scale to the finest upsamples each
        # partial sum by two at a time. With nearest-neighbour repetition this
        # equals upsampling every scale straight to full resolution.
        total = self.convs[-1](pyramid[-1])
        for scale in reversed(range(len(self.convs) - 1)):
            finer = pyramid[scale]
            total = _upsample_by_two(total, finer.shape[-2:]) + self.convs[scale](finer)

        # An average rather than a plain sum keeps the activation scale at
        # initialization independent of num_scales.
        return F.softplus(total / len(self.convs))


class MultiScaleConvNet(nn.Module):
    r"""
    The multi-scale convolutional network :math:`f(x_t, t)` of [1] for
    images of shape ``(C, H, W)``, taking and returning flattened examples.

    The input has shape ``[N, D]`` with ``D = C * H * W``: each row is one
    image flattened in ``(C, H, W)`` order, as ``image.reshape(N, -1)``
    gives. This is the only input form, because the reverse kernels pass
    every example flattened. The output has shape ``[N, num_outputs * D]``
    and is ``[N, num_outputs, C, H, W]`` flattened, so output ``k`` for
    element ``d`` is at index ``k * D + d``.

    :param image_shape: ``(C, H, W)``, three positive integers.
    :param int num_outputs: ``K``, the number of outputs per pixel and
        channel (2 for :class:`~pyro_diffusion.reverse.PaperReverse`).
    :param int num_steps: ``T``, the range of ``t``.
    :param int num_scales: the number of scales per convolution layer.
        Scale ``s`` is the input mean-pooled by ``2**s``, so ``num_scales=1``
        is a plain 3x3 convolution. ``2**(num_scales - 1)`` may not exceed
        ``max(H, W)``.
    :param int channels: the number of feature maps of every 3x3 convolution.
    :param int num_conv_layers: the number of multi-scale convolution layers.
    :param int dense_layers: the number of hidden per-pixel dense layers
        between the convolutions and the readout; 0 reads out directly.
    :param int dense_channels: the width of the dense layers; ``channels``
        if omitted.
    :param int num_bumps: ``J``, the number of Gaussian bump functions of
        ``t``, capped at ``T`` by
        :class:`~pyro_diffusion.nets.temporal.GaussianBumps`.
    :param float dropout: the dropout probability after each dense layer,
        active in training mode only.
    :raises ValueError: if an argument is out of range.
    """

    def __init__(
        self,
        image_shape,
        num_outputs,
        num_steps,
        num_scales=3,
        channels=32,
        num_conv_layers=2,
        dense_layers=2,
        dense_channels=None,
        num_bumps=10,
        dropout=0.0,
    ):
        super().__init__()
        self.image_shape = check_image_shape(image_shape, "MultiScaleConvNet")
        if dense_channels is None:
            dense_channels = channels
        minimums = [
            ("num_outputs", num_outputs, 1),
            ("num_steps", num_steps, 1),
            ("num_scales", num_scales, 1),
            ("channels", channels, 1),
            ("num_conv_layers", num_conv_layers, 1),
            ("dense_layers", dense_layers, 0),
            ("dense_channels", dense_channels, 1),
            ("num_bumps", num_bumps, 1),
        ]
        for name, value, minimum in minimums:
            is_integer = isinstance(value, numbers.Integral) and not isinstance(value, bool)
            if not is_integer or value < minimum:
                raise ValueError(
                    f"invalid {name} for MultiScaleConvNet: expected an integer >= {minimum}, "
                    f"got {value!r}"
                )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(
                f"invalid dropout for MultiScaleConvNet: expected 0 <= dropout < 1, got {dropout!r}"
            )
        num_colors, height, width = self.image_shape
        coarsest_factor = 2 ** (num_scales - 1)
        if coarsest_factor > max(height, width):
            largest = max(height, width).bit_length()
            raise ValueError(
                f"num_scales={num_scales} mean-pools by up to {coarsest_factor}, more than the "
                f"largest side of images of shape {self.image_shape}: use num_scales <= {largest}"
            )

        self.num_outputs = int(num_outputs)
        self.data_dim = num_colors * height * width
        self.num_scales = int(num_scales)

        layers = []
        in_channels = num_colors
        for _ in range(num_conv_layers):
            layers.append(_MultiScaleConv(in_channels, channels, num_scales))
            in_channels = channels
        self.conv_layers = nn.ModuleList(layers)

        dense = []
        for _ in range(dense_layers):
            dense.append(nn.Conv2d(in_channels, dense_channels, kernel_size=1))
            dense.append(nn.Softplus())
            dense.append(nn.Dropout(dropout))
            in_channels = dense_channels
        self.dense = nn.Sequential(*dense)

        self.num_steps = int(num_steps)
        self.bumps = GaussianBumps(num_steps, num_bumps)
        readout_channels = self.bumps.num_bumps * num_outputs * num_colors
        self.readout = nn.Conv2d(in_channels, readout_channels, kernel_size=1)
        # A zero readout starts the reverse kernel at its reference value
        # (zero predicted noise, or the forward kernel's own variance).
        nn.init.zeros_(self.readout.weight)
        nn.init.zeros_(self.readout.bias)

    def forward(self, x, t):
        """
        :param torch.Tensor x: :math:`x_t` flattened, shape ``[N, C * H * W]``.
        :param torch.Tensor t: time steps in ``1..T``, shape ``[N]``, or one
            step shared by all examples, shape ``[1]`` or ``[]``.
        :returns: shape ``[N, num_outputs * C * H * W]``, the flattening of
            ``[N, num_outputs, C, H, W]``.
        :raises ValueError: if ``x`` does not have shape ``[N, C * H * W]``
            or ``t`` does not have one step per example.
        """
        check_flat_images("MultiScaleConvNet", self.image_shape, x)
        t = time_steps("MultiScaleConvNet", t, self.num_steps, x)
        num_examples = x.shape[0]
        num_colors, height, width = self.image_shape

        h = x.reshape(num_examples, num_colors, height, width)
        for layer in self.conv_layers:
            h = layer(h)
        h = self.dense(h)
        coefficients = self.readout(h).reshape(
            num_examples, self.bumps.num_bumps, self.num_outputs * self.data_dim
        )

        weights = self.bumps(t.expand(num_examples)).to(coefficients.dtype)
        return torch.einsum("nj,njd->nd", weights, coefficients)
