"""What ``lunar predict`` reads and writes: inputs collected, outputs named and planned, photos read, maps written.

NumPy and OpenCV only (no torch), so predicting with an exported ONNX model never loads torch.
"""

from __future__ import annotations

import errno
import glob
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from lunar_cli.classes import IMAGE_SUFFIXES, decode_image_file, encode_mask, to_rgb_uint8, write_png_atomic
from lunar_cli.console import LunarError, warn
from lunar_cli.files import atomic_path, refuse_overwrite
from lunar_cli.hazard import hazard_image
from lunar_cli.postprocess import Outputs

FORMATS = {"rgb": ".png", "index": ".png", "overlay": "_overlay.png", "probs": ".npz"}
# Maps written beside the mask when asked for -> what is appended to the output's base name.
EXTRAS = {"hazard": "_hazard.png", "uncertainty": "_uncertainty.png"}
OVERLAY_ALPHA = 0.5


def collect_inputs(inputs: list[str]) -> tuple[list[Path], list[dict[str, str]]]:
    """Return (image paths in order, problems) for files, folders, glob patterns and ``-`` (paths on stdin).

    Folders give their images (not recursive, sorted); a pattern is expanded only when
    no such path exists. A path that does not exist is a problem, not an error, so one
    bad line in a long list does not stop the batch. The same file twice counts once.
    """
    paths: list[Path] = []
    problems: list[dict[str, str]] = []
    for arg in inputs:
        if arg == "-":
            lines = sys.stdin.read().splitlines()
            # Lines are literal paths: `find` output may hold [ or * in names.
            for line in (s.strip() for s in lines):
                if line:
                    _add_literal(Path(line), paths, problems)
        elif _exists(Path(arg)) or not glob.has_magic(arg):
            _add_literal(Path(arg), paths, problems)
        else:
            matches = sorted(Path(m) for m in glob.glob(arg, recursive=True))
            images = [m for m in matches if m.is_file() and m.suffix.lower() in IMAGE_SUFFIXES]
            if not images:
                problems.append({"input": arg, "reason": f"{arg}: no image files match this pattern"})
            paths.extend(images)
    unique: dict[Path, Path] = {}
    for p in paths:
        unique.setdefault(p.resolve(), p)
    return list(unique.values()), problems


def _exists(path: Path) -> bool:
    """Return whether ``path`` exists; a name the system refuses (too long, a link loop) does not."""
    try:
        path.stat()
    except OSError:
        return False
    return True


def _problem(path: Path, exc: OSError) -> dict[str, str]:
    """Return the batch problem for a path the system cannot even look at (too long, a link loop, no access)."""
    why = {errno.ENOENT: "no such file or folder", errno.ELOOP: "a symbolic link loop",
           errno.ENAMETOOLONG: "file name too long"}.get(exc.errno or 0, exc.strerror or str(exc))  # fmt: skip
    return {"input": str(path), "reason": f"{path}: {why}"}


def _add_literal(path: Path, paths: list[Path], problems: list[dict[str, str]]) -> None:
    """Append ``path`` (a file) or the images in it (a folder); note it, or a folder entry it cannot use, as a problem."""
    try:
        path.stat()
    except OSError as exc:
        problems.append(_problem(path, exc))
        return
    if not path.is_dir():
        paths.append(path)
        return
    images, before = [], len(problems)
    try:
        entries = sorted(path.iterdir())
    except OSError as exc:
        problems.append(_problem(path, exc))
        return
    for entry in entries:
        if entry.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        try:
            if entry.is_dir():
                continue
            entry.stat()  # a broken link or a link loop: said, not silently skipped
        except OSError as exc:
            problems.append(_problem(entry, exc))
            continue
        images.append(entry)
    if not images and len(problems) == before:
        warn(f"{path}: no images in this folder (looked for {' '.join(IMAGE_SUFFIXES)})")
    paths.extend(images)


def output_names(paths: list[Path], suffixes: Iterable[str]) -> list[str]:
    """Return one output base name per input: its stem, ``<parent>_<stem>`` when stems clash, then ``_2``, ``_3``.

    Every file an input will write (base + each of ``suffixes``) is unique, whatever
    the case, so no output ever overwrites another.
    """
    suffixes = list(suffixes)
    stems = Counter(p.stem.lower() for p in paths)
    used: set[str] = set()
    names = []
    for p in paths:
        base = p.stem if stems[p.stem.lower()] == 1 else f"{p.parent.resolve().name or 'root'}_{p.stem}"
        name, n = base, 2
        while any(f"{name}{s}".lower() in used for s in suffixes):
            name, n = f"{base}_{n}", n + 1
        used.update(f"{name}{s}".lower() for s in suffixes)
        names.append(name)
    return names


def plan_outputs(
    paths: list[Path], output: Path, fmt: str, extras: Iterable[str] = (), model_files: Iterable[Path] = (),
) -> list[dict[str, str | None]]:  # fmt: skip
    """Return, per input, the files to write: ``{"mask": path, "hazard": path or None, "uncertainty": ...}``.

    ``extras`` names the maps written beside each mask (``hazard``, ``uncertainty``). One
    input and ``output`` named like a file (``mask.png``, ``probs.npz``) writes exactly
    there (the extras beside it); otherwise ``output`` is a folder (created). Refuses, as
    one line, an output that is a folder where a file is meant (or the reverse), that
    cannot be written, or that would overwrite an input photo or one of ``model_files``
    (the model and the files of its run).
    """
    output = Path(output)
    extras = [e for e in EXTRAS if e in set(extras)]
    as_file = output.suffix.lower() in (*IMAGE_SUFFIXES, ".npz")
    if as_file and len(paths) > 1:
        raise LunarError(f"{output}: a file name, but there are {len(paths)} inputs; give a folder for -o")
    if as_file:
        want = ".npz" if fmt == "probs" else ".png"
        if output.suffix.lower() != want:
            raise LunarError(f"{output}: --format {fmt} is written as {want}; name the output *{want} or give a folder")
        if output.is_dir():
            raise LunarError(f"{output}: is a folder, but one input writes one file here; give a file name or a folder")
        plan = [{"mask": str(output),
                 **{e: str(output.with_name(output.stem + EXTRAS[e])) if e in extras else None for e in EXTRAS}}]  # fmt: skip
        folder = output.parent
    else:
        if output.exists() and not output.is_dir():
            raise LunarError(f"{output}: exists and is a file; give a folder for the masks")
        suffixes = [FORMATS[fmt]] + [EXTRAS[e] for e in extras]
        plan = [
            {"mask": str(output / f"{n}{FORMATS[fmt]}"),
             **{e: str(output / f"{n}{EXTRAS[e]}") if e in extras else None for e in EXTRAS}}  # fmt: skip
            for n in output_names(paths, suffixes)
        ]
        folder = output
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LunarError(f"{folder}: cannot create the output folder ({exc.strerror}); choose another -o") from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise LunarError(f"{folder}: not writable; choose another -o")

    targets = [Path(f) for entry in plan for f in entry.values() if f is not None]
    refuse_overwrite(targets, paths, "an input photo", "choose another -o")
    refuse_overwrite(targets, model_files, "a file of the model's run", "choose another -o")
    return plan


def read_photo(path: Path, max_pixels: int | None = None) -> tuple[np.ndarray, str | None]:
    """Return (the photo as (H, W, 3) uint8 RGB, what was converted or None).

    Grayscale, RGBA and 16-bit photos are converted (the note says which); JPEGs are
    turned upright by their EXIF orientation. Missing, empty, corrupt or unsupported
    files, and photos of more than ``max_pixels`` (default: the whole-frame budget), are
    a LunarError naming the file.
    """
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise LunarError(f"{path}: unsupported format {path.suffix or '(no suffix)'}; use {' '.join(IMAGE_SUFFIXES)}")
    # The decoder training uses: JPEGs upright by their EXIF orientation, so the mask
    # matches the photo as a viewer shows it and the model sees the sky on top.
    img = decode_image_file(path, "image", max_pixels)
    notes = []
    if img.dtype == np.uint16:
        notes.append("16-bit")
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        notes.append("grayscale")
    elif img.shape[2] == 4:
        notes.append("RGBA (alpha dropped)")
    return to_rgb_uint8(img, str(path)), (" ".join(notes) or None)


def overlay(photo: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Return the photo with class colours blended in (ground, black in the palette, is left as it is)."""
    blended = photo.astype(np.float32)
    coloured = indices != 0  # blending black would only darken the ground
    blended[coloured] = (1 - OVERLAY_ALPHA) * blended[coloured] + OVERLAY_ALPHA * encode_mask(indices)[coloured]
    return blended.round().astype(np.uint8)


def write_outputs(
    targets: dict[str, str | None], fmt: str, photo: np.ndarray, outputs: Outputs, class_names: list[str],
    summary: dict[str, Any], hazard_maps: tuple | None,
) -> list[str]:  # fmt: skip
    """Write the mask (and hazard and uncertainty maps) atomically; return the files written.

    ``summary`` and ``hazard_maps`` come from ``predictor.photo_summary`` (the hazard map
    shows its largest safe circle).
    """
    indices = outputs.classes
    mask_path = Path(targets["mask"])
    if fmt == "rgb":
        write_png_atomic(mask_path, encode_mask(indices))
    elif fmt == "index":
        write_png_atomic(mask_path, indices)
    elif fmt == "overlay":
        write_png_atomic(mask_path, overlay(photo, indices))
    else:
        with atomic_path(mask_path) as tmp, open(tmp, "wb") as fh:  # a file object: savez would add ".npz"
            np.savez_compressed(fh, probs=outputs.probs.astype(np.float16), classes=np.array(class_names))
    written = [str(mask_path)]
    if targets.get("hazard") and hazard_maps is not None:
        hazard, safe = hazard_maps
        write_png_atomic(Path(targets["hazard"]), hazard_image(hazard, safe, summary["hazard"]["largest_safe_region"]))
        written.append(targets["hazard"])
    if targets.get("uncertainty"):
        # 0 (black): certain; 255 (white): every class equally likely.
        write_png_atomic(Path(targets["uncertainty"]), np.round(outputs.uncertainty * 255).astype(np.uint8))
        written.append(targets["uncertainty"])
    return written
