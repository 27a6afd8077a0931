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
from lunar_cli.video import DEFAULT_FPS, VIDEO_SUFFIXES, is_video, numbered_order, probe_video

FORMATS = {"rgb": ".png", "index": ".png", "overlay": "_overlay.png", "probs": ".npz"}
# Maps written beside the mask when asked for -> what is appended to the output's base name.
EXTRAS = {"hazard": "_hazard.png", "uncertainty": "_uncertainty.png"}
OVERLAY_ALPHA = 0.5
INPUT_SUFFIXES = IMAGE_SUFFIXES + VIDEO_SUFFIXES
FRAME_DIGITS = 6  # a video's frame number in its mask names: <video stem>_000123.png


def collect_inputs(inputs: list[str]) -> tuple[list[Path], list[dict[str, str]], list[list[Path]]]:
    """Return (image and video paths in order, problems, numbered sequences) for files, folders, globs and ``-``.

    Folders give their images and videos (not recursive, sorted; a folder of numbered
    frames, ``video.numbered_order``, in the order of their numbers, and listed among the
    sequences); a pattern is expanded only when no such path exists; ``-`` reads paths
    from stdin. A path that does not exist is a problem, not an error, so one bad line in
    a long list does not stop the batch. The same file twice counts once.
    """
    paths: list[Path] = []
    problems: list[dict[str, str]] = []
    sequences: list[list[Path]] = []
    for arg in inputs:
        if arg == "-":
            lines = sys.stdin.read().splitlines()
            # Lines are literal paths: `find` output may hold [ or * in names.
            for line in (s.strip() for s in lines):
                if line:
                    _add_literal(Path(line), paths, problems, sequences)
        elif _exists(Path(arg)) or not glob.has_magic(arg):
            _add_literal(Path(arg), paths, problems, sequences)
        else:
            matches = sorted(Path(m) for m in glob.glob(arg, recursive=True))
            images = [m for m in matches if m.is_file() and m.suffix.lower() in INPUT_SUFFIXES]
            if not images:
                problems.append({"input": arg, "reason": f"{arg}: no image or video files match this pattern"})
            paths.extend(images)
    unique: dict[Path, Path] = {}
    for p in paths:
        unique.setdefault(p.resolve(), p)
    kept = set(map(id, unique.values()))  # the path objects kept: a sequence given twice is one sequence
    return list(unique.values()), problems, [seq for seq in sequences if all(id(p) in kept for p in seq)]


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


def _add_literal(path: Path, paths: list[Path], problems: list[dict[str, str]], sequences: list[list[Path]]) -> None:
    """Append ``path`` (a file) or the images and videos in it (a folder); note it, or an entry it cannot use, as a problem.

    A folder's images that are one numbered sequence come in the order of their numbers and are added to ``sequences``.
    """
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
        if entry.suffix.lower() not in INPUT_SUFFIXES:
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
        warn(f"{path}: no images in this folder (looked for {' '.join(INPUT_SUFFIXES)})")
    frames = numbered_order([p for p in images if not is_video(p)])
    if frames is not None:
        sequences.append(frames)
        images = frames + [p for p in images if is_video(p)]
    paths.extend(images)


def describe_inputs(
    paths: list[Path], sequences: list[list[Path]], every: int, fps: float | None, max_pixels: int,
) -> tuple[list[Path], list[dict[str, Any]], list[dict[str, str]]]:  # fmt: skip
    """Return (the inputs to predict, what each one is, problems): videos opened, numbered sequences sampled.

    Each input is ``{"kind": "photo"}``, a numbered frame ``{"kind": "photo", "frame": its
    place in the sequence, "time_s": frame / fps, or None without ``fps``}`` (only every
    ``every``-th one is kept), or ``{"kind": "video", "fps", "frames" (None: unknown),
    "width", "height"}`` from its header (``fps``, else 30, when it gives no rate). A video
    that cannot be opened, or whose frames are over ``max_pixels``, is a problem.
    """
    place = {p: i for seq in sequences for i, p in enumerate(seq)}
    kept, about, problems = [], [], []
    for path in paths:
        if is_video(path):
            try:
                header = probe_video(path, max_pixels)
            except LunarError as exc:
                problems.append({"input": str(path), "reason": str(exc)})
                continue
            rate = header.fps or fps or DEFAULT_FPS
            if header.fps is None:
                warn(f"{path}: no frame rate in the video's header; time stamps count {rate:g} frames a second (--fps)")
            about.append({"kind": "video", "fps": rate, "frames": header.frames, "width": header.width,
                          "height": header.height})  # fmt: skip
        elif path in place:
            if place[path] % every:
                continue
            about.append({"kind": "photo", "frame": place[path], "time_s": round(place[path] / fps, 6) if fps else None})
        else:
            about.append({"kind": "photo"})
        kept.append(path)
    return kept, about, problems


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
    if as_file and is_video(paths[0]):
        raise LunarError(f"{output}: {paths[0]} is a video, one mask per frame; give a folder for -o, or a video "
                         "file (out.mp4) for one video")  # fmt: skip
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


def frame_targets(targets: dict[str, str | None], fmt: str, frame: int) -> dict[str, str | None]:
    """Return the files frame number ``frame`` of a video writes: its planned names with ``_000123`` before each suffix."""
    ends = {"mask": FORMATS[fmt], **EXTRAS}
    numbered = f"_{frame:0{FRAME_DIGITS}d}"
    return {key: None if name is None else name[: len(name) - len(ends[key])] + numbered + ends[key]
            for key, name in targets.items()}  # fmt: skip


def plan_video_output(
    output: Path, fmt: str, extras: Iterable[str], paths: list[Path], sequences: list[list[Path]],
    model_files: Iterable[Path] = (),
) -> dict[str, str | None]:  # fmt: skip
    """Return the videos one stream of frames writes: ``{"mask": out.mp4, "hazard": out_hazard.mp4 or None, ...}``.

    The inputs must be one video or one folder of numbered frames, and the format one a
    video can show (rgb or overlay); otherwise, and when a video would overwrite an input
    or a file of the model's run, LunarError in one line.
    """
    output = Path(output)
    if fmt not in ("rgb", "overlay"):
        raise LunarError(f"{output}: a video shows --format rgb or overlay, not {fmt} (lossy frames would change "
                         "class indices); give a folder for -o")  # fmt: skip
    one_stream = (len(paths) == 1 and is_video(paths[0])) or (len(sequences) == 1 and sequences[0] == paths)
    if not one_stream:
        raise LunarError(f"{output}: one video is written from one video or one folder of numbered frames, not "
                         f"{len(paths)} inputs; give a folder for -o")  # fmt: skip
    if output.is_dir():
        raise LunarError(f"{output}: is a folder; give the video file to write, or a folder name without a video suffix")
    if not output.parent.is_dir():
        raise LunarError(f"{output.parent}: no such folder; create it or choose another -o")
    if not os.access(output.parent, os.W_OK | os.X_OK):
        raise LunarError(f"{output.parent}: not writable; choose another -o")
    wanted = set(extras)
    plan = {"mask": str(output), **{e: str(output.with_name(output.stem + Path(EXTRAS[e]).stem + output.suffix))
                                    if e in wanted else None for e in EXTRAS}}  # fmt: skip
    targets = [Path(f) for f in plan.values() if f is not None]
    refuse_overwrite(targets, paths, "an input", "choose another -o")
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
    mask_path = Path(targets["mask"])
    if fmt == "probs":
        with atomic_path(mask_path) as tmp, open(tmp, "wb") as fh:  # a file object: savez would add ".npz"
            np.savez_compressed(fh, probs=outputs.probs.astype(np.float16), classes=np.array(class_names))
    images = output_images(targets, fmt, photo, outputs, summary, hazard_maps)
    for key, image in images.items():
        write_png_atomic(Path(targets[key]), image)
    return [str(mask_path)] + [targets[key] for key in EXTRAS if key in images]


def output_images(
    targets: dict[str, str | None], fmt: str, photo: np.ndarray, outputs: Outputs, summary: dict[str, Any],
    hazard_maps: tuple | None,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Return the pictures of one photo's outputs, by target key: the mask (unless probs), hazard, uncertainty maps.

    What ``write_outputs`` writes as PNGs and a video output encodes as frames.
    """
    indices = outputs.classes
    images: dict[str, np.ndarray] = {}
    if fmt != "probs":
        images["mask"] = {"rgb": encode_mask, "index": lambda i: i, "overlay": lambda i: overlay(photo, i)}[fmt](indices)
    if targets.get("hazard") and hazard_maps is not None:
        hazard, safe = hazard_maps
        images["hazard"] = hazard_image(hazard, safe, summary["hazard"]["largest_safe_region"])
    if targets.get("uncertainty"):
        # 0 (black): certain; 255 (white): every class equally likely.
        images["uncertainty"] = np.round(outputs.uncertainty * 255).astype(np.uint8)
    return images
