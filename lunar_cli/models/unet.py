"""The original study's small custom U-Net (about 0.1M parameters by default).

Encoder: blocks of two 3x3 'same' convolutions (BatchNorm, ReLU), with 2x2 max-pooling
and Dropout between blocks. Decoder: 2x2 stride-2 transposed convolutions, then the
skip from the encoder centre-cropped to the upsampled size and concatenated, then a
block. A 1x1 convolution gives the class logits. Weights use He (Kaiming normal) init.

Any input size works: the input is padded (replicate) to a multiple of 2**depth so
every pooling halves it exactly, and the logits are cropped back, so the output is
always (N, num_classes, H, W) and pixel-aligned with the input.

This module imports torch at the top because it defines an ``nn.Module`` class; only
``lunar_cli.models.registry.build_model`` imports it, inside the function, so the CLI
still starts without loading torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lunar_cli.console import LunarError


def double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """Return two 3x3 'same' conv -> BatchNorm -> ReLU layers as one block."""
    # No conv bias: the BatchNorm right after each conv has its own shift.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Return the central (height, width) window of an (N, C, H, W) tensor (``x`` itself when it is that size).

    Only sliced when the sizes differ: a no-op slice would hide the equal sizes from torch.export.
    """
    if x.shape[-2:] == (height, width):
        return x
    top = (x.shape[-2] - height) // 2
    left = (x.shape[-1] - width) // 2
    return x[..., top : top + height, left : left + width]


# The study's custom U-Net (121,204 parameters: widths 8, 16, 32, 64). lunar train's default is
# wider and deeper (config.TrainConfig); checkpoints that name no options were trained with these.
STUDY_OPTIONS = {"base_width": 8, "depth": 3}


class UNet(nn.Module):
    """Custom U-Net: (N, in_channels, H, W) images -> (N, num_classes, H, W) logits.

    ``base_width`` filters at the top level, doubling at each of the ``depth`` poolings
    (the bottleneck has ``base_width * 2**depth``); ``dropout`` follows each pooling.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 4,
        base_width: int = STUDY_OPTIONS["base_width"],
        depth: int = STUDY_OPTIONS["depth"],
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes),
                            ("base_width", base_width), ("depth", depth)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise LunarError(f"custom U-Net: {name} must be an integer >= 1, got {value!r}")
        if depth > 8:
            raise LunarError(f"custom U-Net: depth {depth} is too deep; use at most 8 poolings")
        if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise LunarError(f"custom U-Net: dropout must be a number in [0, 1), got {dropout!r}")

        widths = [base_width * 2**level for level in range(depth + 1)]
        self.depth = depth
        self.encoder = nn.ModuleList()
        prev = in_channels
        for width in widths:
            self.encoder.append(double_conv(prev, width))
            prev = width
        self.pool = nn.MaxPool2d(2)
        self.drop = nn.Dropout(float(dropout))
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(prev, width, kernel_size=2, stride=2))
            self.decoder.append(double_conv(2 * width, width))
            prev = width
        self.head = nn.Conv2d(prev, num_classes, kernel_size=1)

        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits (N, num_classes, H, W) for images (N, in_channels, H, W)."""
        height, width = x.shape[-2:]
        multiple = 2**self.depth
        pad_h, pad_w = (-height) % multiple, (-width) % multiple
        if pad_h or pad_w:
            # Split evenly so that the final crop is a centre crop of the padded frame.
            x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), mode="replicate")

        skips = []
        for level, block in enumerate(self.encoder):
            if level > 0:
                x = self.drop(self.pool(x))
            x = block(x)
            skips.append(x)
        skips.pop()  # the bottleneck's output is x itself, not a skip

        for up, block in zip(self.up, self.decoder):
            x = up(x)
            # After the padding above the sizes already match; cropping keeps the
            # decoder correct for any feature size (the original crop-and-concatenate).
            x = block(torch.cat([center_crop(skips.pop(), x.shape[-2], x.shape[-1]), x], dim=1))
        return center_crop(self.head(x), height, width)
