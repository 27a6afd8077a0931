"""Training augmentation on the device, batched, with every decision drawn per sample.

Geometry: each crop is a random zoom of a random window of its frame, flipped or not,
sampled from the frame with one ``affine_grid``/``grid_sample`` per batch (bilinear for
the image, nearest for the mask, so image and mask stay aligned pixel for pixel; a
window that overhangs its frame is padded, and the mask there is IGNORE_INDEX).

Photometry, for the look of real rover photos (Chang'e-3 frames are brownish, softer,
noisier, vignetted and JPEG-compressed): colour jitter, colour cast, gamma, vignetting,
blur, sensor noise and JPEG-like block artefacts, each with its own strength knob in
``AugmentConfig`` and applied to a random share of the batch.

All random numbers come from one CPU generator seeded by (seed, epoch, rank): a fixed
``DRAWS`` uniforms per sample per batch, so the stream never shifts with the settings and
a resumed run sees the same batches. kornia.augmentation was measured against this code
(bench/RESULTS.md): no faster on CPU, and it draws from the global torch RNG.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lunar_cli.classes import IGNORE_INDEX
from lunar_cli.config import AugmentConfig

DRAWS = 26  # uniform draws per sample per batch (see the column names below)
ZOOM, CX, CY, HFLIP, VFLIP = 0, 1, 2, 3, 4
JITTER, BRIGHT, CONTRAST, SATURATION, HUE = 5, 6, 7, 8, 9
GAMMA, GAMMA_V, CAST, CAST_V, VIGNETTE, VIGNETTE_V, VIGNETTE_X, VIGNETTE_Y = 10, 11, 12, 13, 14, 15, 16, 17
BLUR, BLUR_V, NOISE, NOISE_V, JPEG, JPEG_V, NOISE_SEED, _SPARE = 18, 19, 20, 21, 22, 23, 24, 25


def to_device(values: torch.Tensor, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Return a small CPU tensor (per-sample factors, indices) on ``like``'s device.

    On a GPU the copy goes through pinned memory without blocking, so the batch's draws
    never make the host wait for the work already queued on the device.
    """
    values = values.to(dtype=dtype) if dtype is not None else values
    if like.device.type != "cuda":
        return values.to(like.device)
    return values.pin_memory().to(like.device, non_blocking=True)


def draws(n: int, generator: torch.Generator) -> torch.Tensor:
    """Return the (n, DRAWS) uniforms of one batch from the CPU ``generator``."""
    return torch.rand((n, DRAWS), generator=generator, dtype=torch.float64)


def crop_theta(
    u: torch.Tensor, sizes: torch.Tensor, canvas: tuple[int, int], crop: int, zoom: tuple[float, float],
    hflip: float = 0.0, vflip: float = 0.0,
) -> torch.Tensor:  # fmt: skip
    """Return affine_grid's theta (B, 2, 3) mapping each crop onto its frame's canvas.

    ``sizes`` (B, 2) are each frame's own (h, w) on the (h, w) ``canvas``. The zoom is
    log-uniform in ``zoom``; the window (crop / zoom pixels) is placed uniformly where it
    fits, and with random slack where it overhangs. At zoom 1 the window starts on a
    whole pixel, so every crop pixel is exactly one frame pixel. ``hflip``/``vflip`` are
    the chances of a mirror.
    """
    lo, hi = zoom
    z = lo * (hi / lo) ** u[:, ZOOM]
    window = crop / z
    h, w = sizes[:, 0].double(), sizes[:, 1].double()
    x0 = (w - window) * u[:, CX]
    y0 = (h - window) * u[:, CY]
    if lo == hi == 1.0:
        x0, y0 = torch.floor(x0), torch.floor(y0)
    ch, cw = canvas
    fx = torch.where(u[:, HFLIP] < hflip, -1.0, 1.0)
    fy = torch.where(u[:, VFLIP] < vflip, -1.0, 1.0)
    theta = torch.zeros((len(u), 2, 3), dtype=torch.float64)
    theta[:, 0, 0] = fx * window / cw
    theta[:, 0, 2] = (2 * x0 + window) / cw - 1
    theta[:, 1, 1] = fy * window / ch
    theta[:, 1, 2] = (2 * y0 + window) / ch - 1
    return theta


def crop_batch(
    images: torch.Tensor, masks: torch.Tensor, theta: torch.Tensor, crop: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (float RGB crops (B, 3, crop, crop) in [0, 1], int64 masks (B, crop, crop)) sampled by ``theta``.

    ``images`` (B, h, w, 3) and ``masks`` (B, h, w) are uint8 canvases on the device.
    """
    b = images.shape[0]
    grid = F.affine_grid(to_device(theta, images, torch.float32), [b, 1, crop, crop], align_corners=False)
    x = images.permute(0, 3, 1, 2).float()
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).div_(255.0)
    # Masks are sampled shifted by one so that "outside the frame" (zero padding) becomes -1, then ignored.
    m = F.grid_sample(masks.unsqueeze(1).float().add_(1.0), grid, mode="nearest", padding_mode="zeros",
                      align_corners=False)[:, 0].round_().long().sub_(1)  # fmt: skip
    return x.clamp_(0.0, 1.0), torch.where(m < 0, IGNORE_INDEX, m)


def _chosen(u: torch.Tensor, column: int, p: float, strength: float) -> torch.Tensor:
    """Return the sample numbers whose draw in ``column`` picks this augmentation (never when strength is 0)."""
    if p <= 0 or strength <= 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.nonzero(u[:, column] < p).flatten()


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return to_device(values, like, like.dtype).view(-1, 1, 1, 1)


def _gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Return one normalised 1-D Gaussian per sigma: (B, 2 * radius + 1)."""
    taps = torch.arange(-radius, radius + 1, dtype=sigma.dtype, device=sigma.device)
    k = torch.exp(-0.5 * (taps.view(1, -1) / sigma.view(-1, 1).clamp(min=1e-3)) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Return float images (B, C, H, W) blurred by a Gaussian of ``sigma`` (B,) pixels each (separable)."""
    b, c, h, w = x.shape
    radius = max(1, math.ceil(3 * float(sigma.max())))
    k = _gaussian_kernels(to_device(sigma, x, x.dtype), radius).repeat_interleave(c, dim=0)  # (B*C, taps)
    flat = x.reshape(1, b * c, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), k.view(b * c, 1, 1, -1), groups=b * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), k.view(b * c, 1, -1, 1), groups=b * c)
    return flat.view(b, c, h, w)


# The JPEG standard's luminance quantisation table (ITU-T T.81, Annex K).
_JPEG_TABLE = [
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
]  # fmt: skip


def jpeg_like(x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Return float images (B, C, H, W) in [0, 1] after 8x8 DCT quantisation at JPEG ``quality`` (B,) each.

    The block transform and the standard's table scaled as libjpeg scales it give JPEG's
    blocking and ringing (no chroma subsampling or entropy coding, which add no artefacts).
    H and W must be multiples of 8 (crops are multiples of 32).
    """
    b, c, h, w = x.shape
    n = torch.arange(8, dtype=x.dtype, device=x.device)
    dct = torch.cos((2 * n.view(1, -1) + 1) * n.view(-1, 1) * math.pi / 16) * math.sqrt(2 / 8)
    dct[0] /= math.sqrt(2)
    q = to_device(quality, x, x.dtype).clamp(1, 100)
    scale = torch.where(q < 50, 5000 / q, 200 - 2 * q) / 100
    table = torch.tensor(_JPEG_TABLE, dtype=x.dtype, device=x.device).view(1, 8, 8)
    step = (table * scale.view(-1, 1, 1)).floor().clamp(min=1).view(b, 1, 1, 1, 8, 8)
    blocks = (x * 255 - 128).view(b, c, h // 8, 8, w // 8, 8).permute(0, 1, 2, 4, 3, 5)
    coeff = dct @ blocks @ dct.T
    blocks = dct.T @ (torch.round(coeff / step) * step) @ dct
    return ((blocks.permute(0, 1, 2, 4, 3, 5).reshape(b, c, h, w) + 128) / 255).clamp(0.0, 1.0)


def _gray(img: torch.Tensor) -> torch.Tensor:
    """Return the (N, 1, H, W) luminance of float RGB (N, 3, H, W) (ITU-R 601, as torchvision)."""
    r, g, b = img.unbind(-3)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(-3)


def _shift_hue(img: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Return float RGB (N, 3, H, W) in [0, 1] with hue rotated by ``shift`` (N,) turns, as TF.adjust_hue."""
    r, g, b = img.unbind(-3)
    maxc = torch.maximum(torch.maximum(r, g), b)  # elementwise: much faster than a max over dim -3
    chroma = maxc - torch.minimum(torch.minimum(r, g), b)
    # Hue in sixths of a turn (HSV as torchvision's _rgb_to_hsv): which channel is largest picks
    # the numerator and the offset. Grey pixels have numerator 0, so clamping chroma keeps them at 0.
    r_max, g_max = maxc == r, maxc == g
    numerator = torch.where(r_max, g - b, torch.where(g_max, b - r, r - g))
    offset = torch.where(r_max, 0.0, torch.where(g_max, 2.0, 4.0))
    h = numerator.div_(chroma.clamp(min=1e-12)).add_(offset).add_(6.0 * shift.view(-1, 1, 1))
    # HSV back to RGB without branches: channel n is v - chroma * clamp(min(k, 4 - k), 0, 1), k = (n + h) mod 6.
    k = torch.remainder(h.unsqueeze(-3) + torch.tensor([5.0, 3.0, 1.0], device=img.device).view(1, 3, 1, 1), 6.0)
    weight = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return weight.mul_(chroma.unsqueeze(-3)).neg_().add_(maxc.unsqueeze(-3))


def color_jitter_(
    img: torch.Tensor,
    brightness: torch.Tensor,
    contrast: torch.Tensor,
    saturation: torch.Tensor,
    hue: torch.Tensor,
) -> torch.Tensor:
    """Return float RGB (N, 3, H, W) in [0, 1] jittered per sample (each factor an (N,) tensor); overwrites ``img``.

    Brightness, contrast, saturation, then hue, each clamped to [0, 1] like torchvision's
    ``adjust_*`` (in a fixed order where ColorJitter draws a random one).
    """

    if img.device.type == "cpu" and img.shape[0] > 1:
        # One image at a time keeps the ~30 passes over the pixels inside the CPU cache:
        # 2-3x faster than streaming the whole batch through memory for every op.
        for i in range(img.shape[0]):
            one = slice(i, i + 1)
            img[one] = color_jitter_(img[one], brightness[one], contrast[one], saturation[one], hue[one])
        return img

    def per_sample(x: torch.Tensor) -> torch.Tensor:
        return to_device(x, img, img.dtype).view(-1, 1, 1, 1)

    img.mul_(per_sample(brightness)).clamp_(0.0, 1.0)
    c = per_sample(contrast)
    mean_gray = _gray(img).mean(dim=(-3, -2, -1), keepdim=True)
    img.mul_(c).add_(mean_gray * (1.0 - c)).clamp_(0.0, 1.0)
    s = per_sample(saturation)
    gray = _gray(img).mul_(1.0 - s)  # before img changes in place
    img.mul_(s).add_(gray).clamp_(0.0, 1.0)
    if not bool((hue != 0).any()):  # the hue turn is the costliest step: skip it when it does nothing
        return img
    return _shift_hue(img, to_device(hue, img, img.dtype))


def photometric_(x: torch.Tensor, u: torch.Tensor, p: AugmentConfig) -> torch.Tensor:
    """Return float RGB crops (B, 3, H, W) in [0, 1] with the photometric augmentations of ``p``; may overwrite ``x``.

    Each augmentation picks its own samples from its column of ``u`` (the batch's draws).
    """
    def apply(rows: torch.Tensor, fn) -> None:
        if len(rows):
            on_dev = to_device(rows, x)
            x[on_dev] = fn(x[on_dev], rows).clamp_(0.0, 1.0)  # indexing gathers a copy: safe to modify

    def signed(rows, column):  # uniform in [-1, 1)
        return u[rows, column] * 2.0 - 1.0

    rows = _chosen(u, JITTER, p.jitter_p, p.brightness + p.contrast + p.saturation + p.hue)
    apply(rows, lambda y, r: color_jitter_(
        y, 1.0 + signed(r, BRIGHT) * p.brightness, 1.0 + signed(r, CONTRAST) * p.contrast,
        1.0 + signed(r, SATURATION) * p.saturation, signed(r, HUE) * p.hue,
    ))  # fmt: skip
    chance = p.photometric_p
    # Warm or cool cast: red and blue gains move opposite ways.
    gains = lambda r: torch.stack([1 + signed(r, CAST_V) * p.color_cast, torch.ones(len(r), dtype=u.dtype),  # noqa: E731
                                   1 - signed(r, CAST_V) * p.color_cast], dim=1)  # fmt: skip
    apply(_chosen(u, CAST, chance, p.color_cast), lambda y, r: y * to_device(gains(r), y, y.dtype).view(-1, 3, 1, 1))
    gamma = lambda r: torch.exp(signed(r, GAMMA_V) * math.log1p(p.gamma))  # noqa: E731
    apply(_chosen(u, GAMMA, chance, p.gamma), lambda y, r: y.clamp_(min=1e-6).pow_(_per_sample(gamma(r), y)))
    apply(_chosen(u, VIGNETTE, chance, p.vignette), lambda y, r: y * _vignette(y, r, u, p.vignette))
    apply(_chosen(u, BLUR, chance, p.blur), lambda y, r: blur(y, (0.3 + u[r, BLUR_V] * (p.blur - 0.3)).clamp(min=0.3)))
    apply(_chosen(u, NOISE, chance, p.noise), lambda y, r: y + _noise(y, r, u, p.noise))
    lowest = p.jpeg_quality
    apply(_chosen(u, JPEG, chance, float(lowest)), lambda y, r: jpeg_like(y, lowest + u[r, JPEG_V] * (95 - lowest)))
    return x


def _vignette(y: torch.Tensor, rows: torch.Tensor, u: torch.Tensor, strength: float) -> torch.Tensor:
    """Return (B, 1, H, W) brightness factors falling off by up to ``strength`` from a random centre."""
    _, _, h, w = y.shape
    cx = _per_sample(u[rows, VIGNETTE_X] * 2 - 1, y)
    cy = _per_sample(u[rows, VIGNETTE_Y] * 2 - 1, y)
    yy = torch.linspace(-1, 1, h, device=y.device, dtype=y.dtype).view(1, 1, h, 1)
    xx = torch.linspace(-1, 1, w, device=y.device, dtype=y.dtype).view(1, 1, 1, w)
    r2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / 2
    return 1 - _per_sample(u[rows, VIGNETTE_V] * strength, y) * r2.clamp(max=1)


def _noise(y: torch.Tensor, rows: torch.Tensor, u: torch.Tensor, sigma: float) -> torch.Tensor:
    """Return Gaussian sensor noise for ``y``, up to ``sigma``, from a device generator seeded by the draws."""
    generator = torch.Generator(device=y.device).manual_seed(int(u[rows[0], NOISE_SEED] * 2**62))
    noise = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
    return noise.mul_(_per_sample(u[rows, NOISE_V] * sigma, y))


def augment_crops(
    images: torch.Tensor, masks: torch.Tensor, sizes: torch.Tensor, *, crop: int,
    zoom: tuple[float, float], params: AugmentConfig | None, generator: "torch.Generator | None",
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Return (float RGB (B, 3, crop, crop) in [0, 1], int64 masks (B, crop, crop)) from uint8 frame canvases.

    With ``params`` and a ``generator``: random zoom, window, flips and photometry per
    sample. Without: the centred crop at zoom 1 (a whole frame when the crop equals it).
    """
    canvas = tuple(images.shape[1:3])
    if params is None or generator is None:
        u = torch.full((images.shape[0], DRAWS), 0.5, dtype=torch.float64)
        return crop_batch(images, masks, crop_theta(u, sizes, canvas, crop, (1.0, 1.0)), crop)
    u = draws(images.shape[0], generator)
    theta = crop_theta(u, sizes, canvas, crop, zoom, params.hflip, params.vflip)
    x, m = crop_batch(images, masks, theta, crop)
    return photometric_(x, u, params), m
