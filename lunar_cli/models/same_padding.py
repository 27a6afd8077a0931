"""TensorFlow "same" padding made constant for the input sizes a U-Net takes, so export stays quick.

timm's TensorFlow ports (``tf_*`` models such as ``tf_efficientnet_lite0``) pad their strided
convolutions "same" (``Conv2dSame``), working the padding out from the input size on every
call. Exported with symbolic sizes (``lunar export --format onnx``), those sums nest through
the network and torch.export spends minutes simplifying them (over 9 minutes here, against 25
seconds for mobilenet_v3_large). Yet the padding depends on the size only through its remainder
by the stride, and an smp U-Net takes only sides that are multiples of its output stride: where
each such layer sees a side divisible by its stride at the smallest input, it does at every
input, and its padding is one constant. Those layers become ``FixedPadConv2d``: same weights,
same state-dict keys, same outputs.

This module imports torch at the top because it defines an ``nn.Module`` class; only
``lunar_cli.models.registry`` imports it, inside a function, so the CLI starts without torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FixedPadConv2d(nn.Conv2d):
    """A convolution with constant, possibly uneven, zero padding (``pad``: left, right, top, bottom)."""

    pad: tuple[int, int, int, int] = (0, 0, 0, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, self.pad), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def fix_same_padding(encoder: nn.Module, divisor: int, in_channels: int = 3) -> int:
    """Give ``encoder``'s timm ``Conv2dSame`` layers the constant padding they have for sides that are multiples of ``divisor``.

    Returns how many layers were changed: 0 when there are none, or when some layer would
    see a side its stride does not divide (the padding then varies; the layers stay as timm
    made them). The check runs the encoder once on a ``divisor`` x ``divisor`` input.
    """
    from timm.layers import Conv2dSame  # timm: loaded with the module that builds the network
    from timm.layers.padding import pad_same_arg  # timm: loaded with the module that builds the network

    layers = {name: m for name, m in encoder.named_modules() if type(m) is Conv2dSame}
    if not layers:
        return 0
    sizes: dict[str, tuple[int, int]] = {}

    def note_size(name: str):
        def hook(module: nn.Module, args: tuple) -> None:  # returns None: the input goes on unchanged
            sizes.setdefault(name, tuple(args[0].shape[-2:]))

        return hook

    hooks = [m.register_forward_pre_hook(note_size(name)) for name, m in layers.items()]
    training = encoder.training
    try:
        with torch.no_grad():
            encoder.eval()  # BatchNorm's running statistics stay as they are
            encoder(torch.zeros(1, in_channels, divisor, divisor))
    finally:
        encoder.train(training)
        for hook in hooks:
            hook.remove()
    if any(n not in sizes or sizes[n][0] % m.stride[0] or sizes[n][1] % m.stride[1] for n, m in layers.items()):
        return 0
    for name, layer in layers.items():
        fixed = FixedPadConv2d(
            layer.in_channels, layer.out_channels, layer.kernel_size, stride=layer.stride, padding=0,
            dilation=layer.dilation, groups=layer.groups, bias=layer.bias is not None, device="meta",
        )  # fmt: skip
        fixed.weight, fixed.bias = layer.weight, layer.bias  # the same Parameters: state dict unchanged
        fixed.pad = tuple(int(p) for p in pad_same_arg(sizes[name], layer.kernel_size, layer.stride, layer.dilation))
        fixed.train(layer.training)
        parent_name, _, child = name.rpartition(".")
        setattr(encoder.get_submodule(parent_name) if parent_name else encoder, child, fixed)
    return len(layers)
