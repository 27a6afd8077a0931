"""The reliability corpus: bad inputs that users meet in data they did not make, each built by a function.

Nothing here is a checked-in binary: every file is made on the spot in a tmp folder.
``CORPUS`` lists every input with the kind of thing it is (what it stands in for) and
one line saying what is wrong with it; ``tests/test_reliability.py`` runs each against
every command that takes that kind of input, and ``tests/README.md`` tabulates the result.
"""

from __future__ import annotations

import os
import stat
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from lunar_cli.classes import encode_mask, write_png_atomic

PHOTO, MASK, ARCHIVE, CHECKPOINT, CONFIG = "photo", "mask", "archive", "checkpoint", "config"


def scene(height: int = 48, width: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return (RGB photo, class-index mask): a sky band, ground and one rock, with some texture."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), np.uint8)
    mask[: height // 4] = 1
    mask[height // 2 : height // 2 + height // 5, width // 3 : width // 3 + width // 5] = 3
    photo = (mask[:, :, None] * 50 + 30 + rng.integers(0, 20, (height, width, 3))).astype(np.uint8)
    return photo, mask


def _encode(suffix: str, array: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(suffix, array)
    assert ok, suffix
    return buf.tobytes()


# --- photos ------------------------------------------------------------------------------
# Each takes the path the photo should have (a stem and .png) and returns the path it wrote.


def truncated_png(path: Path) -> Path:
    """A PNG cut off halfway (an interrupted copy or download)."""
    data = _encode(".png", scene()[0])
    path.write_bytes(data[: len(data) // 2])
    return path


def zero_byte(path: Path) -> Path:
    """An empty file with an image name."""
    path.write_bytes(b"")
    return path


def text_named_png(path: Path) -> Path:
    """A text file named .png."""
    path.write_text("these are notes about the rover, not a picture\n", encoding="utf-8")
    return path


def exif_rotated_jpeg(path: Path) -> Path:
    """A JPEG whose pixels are stored sideways with EXIF orientation 6 (a phone held upright).

    Stored: the sky band is on the left. Shown upright (as viewers do): the sky is on top.
    """
    photo, _ = scene(64, 48)
    stored = np.ascontiguousarray(np.rot90(photo, k=1))  # 90 degrees anticlockwise: orientation 6 undoes it
    jpeg = _encode(".jpg", stored[:, :, ::-1])
    tiff = b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHIHH", 0x0112, 3, 1, 6, 0) + struct.pack("<I", 0)
    app1 = b"Exif\x00\x00" + tiff
    path = path.with_suffix(".jpg")
    path.write_bytes(jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:])
    return path


def grayscale_png(path: Path) -> Path:
    """A single-channel (grayscale) photo."""
    write_png_atomic(path, scene()[0][:, :, 0])
    return path


def sixteen_bit_png(path: Path) -> Path:
    """A 16-bit-per-channel RGB photo (astronomy cameras write these)."""
    import cv2

    deep = scene()[0].astype(np.uint16) * 257
    path.write_bytes(_encode(".png", cv2.cvtColor(deep, cv2.COLOR_RGB2BGR)))
    return path


def rgba_png(path: Path) -> Path:
    """An RGBA photo with a half-transparent alpha channel."""
    import cv2

    photo = scene()[0]
    rgba = np.dstack([photo, np.full(photo.shape[:2], 128, np.uint8)])
    path.write_bytes(_encode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA)))
    return path


def huge_png(path: Path, width: int = 3000, height: int = 2000) -> Path:
    """A large frame (default 3000x2000; the slow test uses 8000x6000)."""
    photo, _ = scene(height, width)
    write_png_atomic(path, photo)
    return path


def non_utf8_name(path: Path) -> Path:
    """A good photo whose file name holds bytes that are not UTF-8 (Latin-1 'é' from an old camera)."""
    name = os.fsdecode(os.fsencode(path.stem) + b"_\xe9" + os.fsencode(path.suffix))
    target = path.with_name(name)
    write_png_atomic(target, scene()[0])
    return target


# --- masks -------------------------------------------------------------------------------


def antialiased_mask(path: Path, height: int = 48, width: int = 64) -> Path:
    """A colour mask with blurred (anti-aliased) edges and a few stray colours (yellow, grey)."""
    import cv2

    _, mask = scene(height, width)
    rgb = cv2.GaussianBlur(encode_mask(mask), (5, 5), 0)
    rgb[2, 2] = (255, 255, 0)
    rgb[5:7, 9:11] = (128, 128, 128)
    write_png_atomic(path, rgb)
    return path


def wrong_size_mask(path: Path, height: int = 48, width: int = 64) -> Path:
    """A mask of another size than its image (height and width swapped, then 8 px short)."""
    _, mask = scene(width - 8, height)
    write_png_atomic(path, encode_mask(mask))
    return path


def missing_mask(path: Path, height: int = 48, width: int = 64) -> Path:
    """No mask at all for an image (the path is left absent)."""
    path.unlink(missing_ok=True)
    return path


# --- archives ----------------------------------------------------------------------------


def _dataset_entries() -> dict[str, bytes]:
    photo, mask = scene(32, 32)
    png, colours = _encode(".png", photo[:, :, ::-1]), _encode(".png", encode_mask(mask)[:, :, ::-1])
    entries = {}
    for i in (1, 2, 3):
        entries[f"images/render/render{i:04d}.png"] = png
        entries[f"images/clean/clean{i:04d}.png"] = colours
    entries["real_moon_images/PCAM1.png"] = png
    entries["real_moon_images/g_PCAM1.png"] = colours
    return entries


def zip_with_parent_entry(path: Path) -> Path:
    """A dataset zip that also holds '../escaped.txt' (zip-slip: it would land beside the target)."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in _dataset_entries().items():
            zf.writestr(name, data)
        zf.writestr("../escaped.txt", b"written outside the data folder")
    return path


def zip_with_symlink(path: Path) -> Path:
    """A dataset zip whose images/render/render0004.png is a symbolic link to /etc/passwd."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in _dataset_entries().items():
            zf.writestr(name, data)
        link = zipfile.ZipInfo("images/render/render0004.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    return path


def models_zip_with_parent_entry(path: Path) -> Path:
    """A zip of trained checkpoints with an entry '../../escaped.pt'."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("trained/unet_custom.pt", b"weights")
        zf.writestr("../../escaped.pt", b"written outside models/")
    return path


# --- checkpoints -------------------------------------------------------------------------


class Payload:
    """Unpickling this creates the folder ``marker``: proof that pickle code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def pickle_checkpoint(path: Path, marker: Path) -> Path:
    """A .pt that looks like a lunar checkpoint but carries a pickle payload (makes ``marker`` when loaded unsafely)."""
    import torch

    meta = {"format": "lunar-checkpoint", "format_version": 1, "backbone": "custom"}
    torch.save({"meta": meta, "model": {}, "train_state": Payload(marker)}, path)
    return path


def foreign_state_dict(path: Path) -> Path:
    """A bare state dict of another network (a torchvision-style classifier), as other projects save them."""
    import torch

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8, 10))
    torch.save(net.state_dict(), path)
    return path


def mismatched_checkpoint(path: Path) -> Path:
    """A lunar checkpoint whose meta says the default custom U-Net but whose weights are another width."""
    import torch

    from lunar_cli.models.checkpoint import checkpoint_meta, save_checkpoint
    from lunar_cli.models.registry import build_model

    torch.manual_seed(0)
    other = build_model("custom", base_width=4, depth=2)
    from lunar_cli.frames import FrameSize

    meta = checkpoint_meta("custom", frame_size=FrameSize(square=32), normalization={"mean": [0.0] * 3, "std": [1.0] * 3},
                           epoch=1)  # fmt: skip
    save_checkpoint(path, model_state=other.state_dict(), meta=meta)
    return path


# --- config files ------------------------------------------------------------------------


def yaml_wrong_types(path: Path) -> Path:
    """A config whose values have the wrong types (a word for a number, a number for a path)."""
    path.write_text("seed: forty-two\ndata:\n  image_size: large\nruns_dir: 7\n", encoding="utf-8")
    return path


def yaml_unknown_keys(path: Path) -> Path:
    """A config with a misspelt section and a key that does not exist."""
    path.write_text("trian:\n  epochs: 3\nbatch_size: 4\n", encoding="utf-8")
    return path


def yaml_python_tag(path: Path, marker: Path) -> Path:
    """A config with a !!python tag that would create ``marker`` under an unsafe yaml.load."""
    path.write_text(f"seed: !!python/object/apply:os.mkdir [{str(marker)!r}]\n", encoding="utf-8")
    return path


def yaml_not_utf8(path: Path) -> Path:
    """A config saved in Latin-1 (not UTF-8)."""
    path.write_bytes("# r\xe9glages\nseed: 1\n".encode("latin-1"))
    return path


# --- the corpus --------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One bad input: its name, the kind of input it stands in for, what is wrong, and whether lunar can use it."""

    name: str
    kind: str  # PHOTO, MASK, ARCHIVE, CHECKPOINT or CONFIG
    fault: str  # one line for tests/README.md
    build: Callable[..., Path]
    usable: bool  # lunar should convert or accept it (with a warning where documented), not refuse it


CORPUS: tuple[Item, ...] = (
    Item("truncated_png", PHOTO, "PNG cut off halfway", truncated_png, False),
    Item("zero_byte", PHOTO, "zero-byte file named .png", zero_byte, False),
    Item("text_as_png", PHOTO, "text file named .png", text_named_png, False),
    Item("exif_jpeg", PHOTO, "JPEG stored sideways with EXIF orientation 6", exif_rotated_jpeg, True),
    Item("grayscale", PHOTO, "grayscale (1-channel) PNG", grayscale_png, True),
    Item("16_bit", PHOTO, "16-bit RGB PNG", sixteen_bit_png, True),
    Item("rgba", PHOTO, "RGBA PNG with alpha", rgba_png, True),
    Item("huge_3000x2000", PHOTO, "3000x2000 frame (8000x6000 with LUNAR_SLOW=1)", huge_png, True),
    Item("non_utf8_name", PHOTO, "file name with non-UTF-8 bytes", non_utf8_name, True),
    Item("antialiased_mask", MASK, "mask with anti-aliased edges and stray colours", antialiased_mask, True),
    Item("wrong_size_mask", MASK, "mask of another size than its image", wrong_size_mask, False),
    Item("missing_mask", MASK, "image without a mask", missing_mask, False),
    Item("zip_slip", ARCHIVE, "dataset zip with a '../' entry", zip_with_parent_entry, False),
    Item("zip_symlink", ARCHIVE, "dataset zip with a symbolic link entry", zip_with_symlink, False),
    Item("models_zip_slip", ARCHIVE, "checkpoints zip with a '../../' entry", models_zip_with_parent_entry, False),
    Item("pickle_payload", CHECKPOINT, "checkpoint carrying a pickle payload", pickle_checkpoint, False),
    Item("foreign_state_dict", CHECKPOINT, "bare state dict of another network", foreign_state_dict, False),
    Item("mismatched_weights", CHECKPOINT, "lunar checkpoint whose weights are another architecture",
         mismatched_checkpoint, False),  # fmt: skip
    Item("yaml_wrong_types", CONFIG, "YAML config with values of the wrong type", yaml_wrong_types, False),
    Item("yaml_unknown_keys", CONFIG, "YAML config with unknown keys", yaml_unknown_keys, False),
    Item("yaml_python_tag", CONFIG, "YAML config with a !!python/object tag", yaml_python_tag, False),
    Item("yaml_not_utf8", CONFIG, "YAML config in Latin-1", yaml_not_utf8, False),
)


def item(name: str) -> Item:
    """Return the corpus item called ``name``."""
    return next(i for i in CORPUS if i.name == name)
