r"""
A U-Net reverse network with a time embedding, in the style of the noise
predictor of Ho et al. (2020) [1], built on the U-Net of Ronneberger et
al. (2015) [2]. The defaults keep it small, about 0.64 million parameters,
so that it can be trained on a CPU.

The network maps a noisy image :math:`x_t` and its time step ``t`` to
``num_outputs`` images of the same shape, such as the predicted noise and
variance fraction of :class:`~pyro_diffusion.reverse.EpsilonReverse` or the
:math:`z_\mu` and :math:`z_\Sigma` of
:class:`~pyro_diffusion.reverse.PaperReverse`. Its parts are:

1. A time embedding: the sinusoidal code of
   :class:`~pyro_diffusion.nets.temporal.SinusoidalEmbedding`, followed by
   a two-layer MLP with a SiLU between the layers.
2. A 3x3 input convolution from the image's ``C`` channels to ``channels``.
3. The down path, one level per entry ``m`` of ``channel_multipliers``.
   Each level has ``num_res_blocks`` residual blocks with ``channels * m``
   feature maps. Between levels, a 3x3 convolution with stride 2 halves
   the height and width.
4. The middle at the lowest resolution: a residual block, an optional
   self-attention block and a second residual block.
5. The up path, which visits the levels in reverse. Each level has
   ``num_res_blocks + 1`` residual blocks, and each block first
   concatenates the next skip connection, the activations the down path
   stored at that resolution. Between levels, nearest-neighbour upsampling
   by 2 and a 3x3 convolution restore the finer resolution.
6. GroupNorm, SiLU and a 3x3 readout convolution to ``num_outputs * C``
   channels. The readout starts at zero, so a new network outputs zeros and
   the reverse kernel starts at its reference value.

A residual block computes GroupNorm, SiLU and a 3x3 convolution, adds a
linear map of the SiLU of the time embedding to every pixel, then applies
GroupNorm, SiLU, dropout and a second 3x3 convolution, and adds its input
back. Where the block changes the channel count, that shortcut passes
through a 1x1 convolution.

Heights and widths need not be even. Each stride-2 convolution pads by one
pixel, so a side of length ``n`` becomes ``ceil(n / 2)``. The up path
upsamples by 2 and crops the result to the size of the matching skip
connection. No padded pixel enters a GroupNorm statistic, because only the
convolutions pad. Level ``i`` has sides ``ceil(H / 2**i)`` and
``ceil(W / 2**i)``, and the network rejects a level that would downsample a
1 x 1 map, so ``2**(len(channel_multipliers) - 2) < max(H, W)``.

References

[1] J. Ho, A. Jain, P. Abbeel, "Denoising Diffusion Probabilistic Models",
    2020.
[2] O. Ronneberger, P. Fischer, T. Brox, "U-Net: Convolutional Networks for
    Biomedical Image Segmentation", 2015.
"""

import math
import numbers

import torch
from torch import nn
from torch.nn import functional as F

from .checks import check_flat_images, check_image_shape, time_steps
from .temporal import SinusoidalEmbedding

__all__ = ["UNet"]

#: The width of the sinusoidal code of ``t``, as in :class:`~pyro_diffusion.nets.mlp.MLP`.
_SINUSOID_DIM = 64
#: The largest number of GroupNorm groups that :func:`_group_norm` chooses.
_MAX_GROUPS = 8


def _group_norm(num_channels):
    """
    Build a GroupNorm over ``num_channels`` channels with the largest group
    count that divides ``num_channels`` and is at most ``_MAX_GROUPS``.
    """
    num_groups = max(g for g in range(1, _MAX_GROUPS + 1) if num_channels % g == 0)
    return nn.GroupNorm(num_groups, num_channels)


class _ResidualBlock(nn.Module):
    """
    A residual block conditioned on the time embedding:
    ``[N, K_in, h, w] -> [N, K_out, h, w]``.
    """

    def __init__(self, in_channels, out_channels, time_dim, dropout):
        super().__init__()
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time = nn.Linear(time_dim, out_channels)
        self.norm2 = _group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        if in_channels == out_channels:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, h, time_features):
        """
        :param torch.Tensor h: shape ``[N, K_in, h, w]``.
        :param torch.Tensor time_features: the time embedding, shape ``[N, time_dim]``.
        :returns: shape ``[N, K_out, h, w]``.
        """
        z = self.conv1(F.silu(self.norm1(h)))
        z = z + self.time(F.silu(time_features))[:, :, None, None]
        z = self.conv2(self.dropout(F.silu(self.norm2(z))))
        return self.shortcut(h) + z


class _SelfAttention(nn.Module):
    """
    Single-head self-attention over all pixels, with a residual connection:
    ``[N, K, h, w] -> [N, K, h, w]``.
    """

    def __init__(self, num_channels):
        super().__init__()
        self.norm = _group_norm(num_channels)
        self.query_key_value = nn.Conv2d(num_channels, 3 * num_channels, kernel_size=1)
        self.projection = nn.Conv2d(num_channels, num_channels, kernel_size=1)

    def forward(self, h):
        num_examples, num_channels, height, width = h.shape
        query, key, value = self.query_key_value(self.norm(h)).flatten(2).chunk(3, dim=1)
        # scores[n, i, j] is the similarity of pixel i's query and pixel j's key.
        scores = torch.einsum("nci,ncj->nij", query, key) / math.sqrt(num_channels)
        attended = torch.einsum("nij,ncj->nci", scores.softmax(dim=-1), value)
        attended = attended.reshape(num_examples, num_channels, height, width)
        return h + self.projection(attended)


class _Upsample(nn.Module):
    """
    Nearest-neighbour upsampling by 2, cropped to ``size = (H, W)``, then a
    3x3 convolution: ``[N, K, h, w] -> [N, K, H, W]`` with ``H <= 2h`` and
    ``W <= 2w``.
    """

    def __init__(self, num_channels):
        super().__init__()
        self.conv = nn.Conv2d(num_channels, num_channels, kernel_size=3, padding=1)

    def forward(self, h, size):
        h = F.interpolate(h, scale_factor=2, mode="nearest")
        return self.conv(h[..., : size[0], : size[1]])


def _check_channel_multipliers(channel_multipliers):
    message = (
        "invalid channel_multipliers for UNet: expected a non-empty sequence of positive "
        f"integers, one per resolution level, such as (1, 2), got {channel_multipliers!r}"
    )
    try:
        multipliers = tuple(channel_multipliers)
    except TypeError:
        raise ValueError(message) from None
    if not multipliers:
        raise ValueError(message)
    for multiplier in multipliers:
        if not _is_integer(multiplier) or multiplier < 1:
            raise ValueError(message)
    return tuple(int(multiplier) for multiplier in multipliers)


def _check_sizes(num_outputs, num_steps, channels, num_res_blocks, dropout):
    minimums = [
        ("num_outputs", num_outputs, 1),
        ("num_steps", num_steps, 1),
        ("channels", channels, 1),
        ("num_res_blocks", num_res_blocks, 1),
    ]
    for name, value, minimum in minimums:
        if not _is_integer(value) or value < minimum:
            raise ValueError(
                f"invalid {name} for UNet: expected an integer >= {minimum}, got {value!r}"
            )
    is_number = isinstance(dropout, numbers.Real) and not isinstance(dropout, bool)
    if not is_number or not 0.0 <= dropout < 1.0:
        raise ValueError(
            f"invalid dropout for UNet: expected a number with 0 <= dropout < 1, "
            f"got {dropout!r}"
        )


def _check_level_count(multipliers, image_shape):
    # Halving with rounding up takes a side of n pixels to one pixel in
    # (n - 1).bit_length() steps. One more level would only downsample a
    # 1 x 1 map into another.
    halvings_to_one_pixel = (max(image_shape[1:]) - 1).bit_length()
    if len(multipliers) - 1 > halvings_to_one_pixel:
        raise ValueError(
            f"invalid channel_multipliers={multipliers} for images of shape "
            f"{image_shape}: {len(multipliers)} levels halve the image "
            f"{len(multipliers) - 1} times, but it shrinks to 1 x 1 after "
            f"{halvings_to_one_pixel}, so give at most {halvings_to_one_pixel + 1} "
            "channel multipliers"
        )


def _is_integer(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class UNet(nn.Module):
    r"""
    A U-Net :math:`f(x_t, t)` with a time embedding, in the style of [1],
    for images of shape ``(C, H, W)``, taking and returning flattened
    examples.

    The input has shape ``[N, D]`` with ``D = C * H * W``: each row is one
    image flattened in ``(C, H, W)`` order, as ``image.reshape(N, -1)``
    gives. This is the only input form, because the reverse kernels pass
    every example flattened. The output has shape ``[N, num_outputs * D]``
    and is ``[N, num_outputs, C, H, W]`` flattened, so output ``k`` for
    element ``d`` is at index ``k * D + d``.

    :param image_shape: ``(C, H, W)``, three positive integers.
    :param int num_outputs: ``K``, the number of outputs per pixel and
        channel (2 for :class:`~pyro_diffusion.reverse.PaperReverse` or a
        learned variance in :class:`~pyro_diffusion.reverse.EpsilonReverse`).
    :param int num_steps: ``T``, the range of ``t``.
    :param int channels: the number of feature maps at the finest level.
        The time embedding has ``4 * channels`` features.
    :param channel_multipliers: one positive integer per resolution level,
        finest first. Level ``i`` has ``channels * channel_multipliers[i]``
        feature maps, and its sides are those of the image halved ``i``
        times, rounding up. Only the last level may be 1 x 1, so
        ``2**(len(channel_multipliers) - 2)`` must be less than
        ``max(H, W)``.
    :param int num_res_blocks: the number of residual blocks per level on
        the down path. The up path has one more per level.
    :param float dropout: the dropout probability inside every residual
        block, active in training mode only.
    :param bool attention: whether to add a self-attention block between
        the two residual blocks at the lowest resolution.
    :raises ValueError: if an argument is out of range.
    """

    def __init__(
        self,
        image_shape,
        num_outputs,
        num_steps,
        channels=32,
        channel_multipliers=(1, 2),
        num_res_blocks=1,
        dropout=0.0,
        attention=False,
    ):
        super().__init__()
        self.image_shape = check_image_shape(image_shape, "UNet")
        multipliers = _check_channel_multipliers(channel_multipliers)
        _check_sizes(num_outputs, num_steps, channels, num_res_blocks, dropout)
        _check_level_count(multipliers, self.image_shape)
        num_colors, height, width = self.image_shape

        self.num_outputs = int(num_outputs)
        self.num_steps = int(num_steps)
        self.data_dim = num_colors * height * width
        self.channel_multipliers = multipliers
        time_dim = 4 * channels

        self.time_embedding = nn.Sequential(
            SinusoidalEmbedding(num_steps, _SINUSOID_DIM),
            nn.Linear(_SINUSOID_DIM, time_dim),
            nn.SiLU(),
            nn.Linear(time_dim, time_dim),
        )
        self.input_conv = nn.Conv2d(num_colors, channels, kernel_size=3, padding=1)

        # The down path stores the input convolution's output and every
        # block's output as skip connections. skip_channels records their
        # widths in the same order, so the up path can pop them.
        skip_channels = [channels]
        current = channels
        self.down_blocks = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        for level, multiplier in enumerate(multipliers):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(_ResidualBlock(current, channels * multiplier, time_dim, dropout))
                current = channels * multiplier
                skip_channels.append(current)
            self.down_blocks.append(blocks)
            if level < len(multipliers) - 1:
                # Padding by one maps a side of n pixels to ceil(n / 2).
                self.downsamples.append(
                    nn.Conv2d(current, current, kernel_size=3, stride=2, padding=1)
                )
                skip_channels.append(current)

        self.middle_in = _ResidualBlock(current, current, time_dim, dropout)
        self.middle_attention = _SelfAttention(current) if attention else None
        self.middle_out = _ResidualBlock(current, current, time_dim, dropout)

        # up_blocks[0] and upsamples[0] belong to the coarsest level.
        self.up_blocks = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        for level in reversed(range(len(multipliers))):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                out_channels = channels * multipliers[level]
                blocks.append(
                    _ResidualBlock(current + skip_channels.pop(), out_channels, time_dim, dropout)
                )
                current = out_channels
            self.up_blocks.append(blocks)
            if level > 0:
                self.upsamples.append(_Upsample(current))

        self.output_norm = _group_norm(current)
        self.readout = nn.Conv2d(current, num_outputs * num_colors, kernel_size=3, padding=1)
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
        check_flat_images("UNet", self.image_shape, x)
        t = time_steps("UNet", t, self.num_steps, x)
        num_examples = x.shape[0]
        time_features = self.time_embedding(t.expand(num_examples))

        h = self.input_conv(x.reshape((num_examples,) + self.image_shape))
        skips = [h]
        for level, blocks in enumerate(self.down_blocks):
            for block in blocks:
                h = block(h, time_features)
                skips.append(h)
            if level < len(self.downsamples):
                h = self.downsamples[level](h)
                skips.append(h)

        h = self.middle_in(h, time_features)
        if self.middle_attention is not None:
            h = self.middle_attention(h)
        h = self.middle_out(h, time_features)

        for level, blocks in enumerate(self.up_blocks):
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), time_features)
            if level < len(self.upsamples):
                # The next skip connection has the finer level's size.
                h = self.upsamples[level](h, skips[-1].shape[-2:])

        out = self.readout(F.silu(self.output_norm(h)))
        return out.reshape(num_examples, self.num_outputs * self.data_dim)
