"""lunar predict: class masks for new photos (files, folders, glob patterns or a list on stdin).

Reads top to bottom: ``collect_inputs`` -> ``plan_outputs`` -> ``read_photo`` ->
``batch_logits`` / ``tiled_logits`` -> ``write_outputs`` -> ``run_predict``.
Preprocessing comes only from the checkpoint (input size, normalisation). Logits are
upsampled back to the photo's own size before the argmax, so masks always match the
photo pixel for pixel. Under torchrun each rank predicts its share of the inputs.
"""

from __future__ import annotations

import glob
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from lunar_cli.classes import IMAGE_SUFFIXES, encode_mask
from lunar_cli.console import LunarError, info, track, warn
from lunar_cli.metrics import predicted_classes

if TYPE_CHECKING:
    import torch

    from lunar_cli.engine import Model

# Output format -> what is appended to the output's base name.
FORMATS = {"rgb": ".png", "index": ".png", "overlay": "_overlay.png", "probs": ".npz"}
HAZARD_SUFFIX = "_hazard.png"
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
        elif Path(arg).exists() or not glob.has_magic(arg):
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


def _add_literal(path: Path, paths: list[Path], problems: list[dict[str, str]]) -> None:
    """Append ``path`` (a file) or the images in it (a folder); note it as a problem if missing."""
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            warn(f"{path}: no images in this folder (looked for {' '.join(IMAGE_SUFFIXES)})")
        paths.extend(images)
    elif path.exists():
        paths.append(path)
    else:
        problems.append({"input": str(path), "reason": f"{path}: no such file or folder"})


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


def plan_outputs(paths: list[Path], output: Path, fmt: str, hazard: bool) -> list[dict[str, str | None]]:
    """Return, per input, the files to write: ``{"mask": path, "hazard": path or None}``.

    One input and ``output`` named like a file (``mask.png``, ``probs.npz``) writes
    exactly there; otherwise ``output`` is a folder (created). Refuses, as one line,
    an output that is a folder where a file is meant (or the reverse), that cannot be
    written, or that would overwrite an input photo.
    """
    output = Path(output)
    as_file = output.suffix.lower() in (*IMAGE_SUFFIXES, ".npz")
    if as_file and len(paths) > 1:
        raise LunarError(f"{output}: a file name, but there are {len(paths)} inputs; give a folder for -o")
    if as_file:
        want = ".npz" if fmt == "probs" else ".png"
        if output.suffix.lower() != want:
            raise LunarError(f"{output}: --format {fmt} is written as {want}; name the output *{want} or give a folder")
        if output.is_dir():
            raise LunarError(f"{output}: is a folder, but one input writes one file here; give a file name or a folder")
        hazard_file = output.with_name(output.stem + HAZARD_SUFFIX) if hazard else None
        plan = [{"mask": str(output), "hazard": None if hazard_file is None else str(hazard_file)}]
        folder = output.parent
    else:
        if output.exists() and not output.is_dir():
            raise LunarError(f"{output}: exists and is a file; give a folder for the masks")
        suffixes = [FORMATS[fmt]] + ([HAZARD_SUFFIX] if hazard else [])
        plan = [
            {"mask": str(output / f"{n}{FORMATS[fmt]}"),
             "hazard": str(output / f"{n}{HAZARD_SUFFIX}") if hazard else None}  # fmt: skip
            for n in output_names(paths, suffixes)
        ]
        folder = output
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LunarError(f"{folder}: cannot create the output folder ({exc.strerror}); choose another -o") from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise LunarError(f"{folder}: not writable; choose another -o")
    photos = {p.resolve() for p in paths}
    for target in (Path(f) for entry in plan for f in entry.values() if f is not None):
        if target.resolve() in photos:
            raise LunarError(f"{target}: would overwrite an input photo; choose another -o")
    return plan


def read_photo(path: Path) -> tuple[np.ndarray, str | None]:
    """Return (the photo as (H, W, 3) uint8 RGB, what was converted or None).

    Grayscale, RGBA and 16-bit photos are converted (the note says which); JPEGs are
    turned upright by their EXIF orientation. Missing, empty, corrupt or unsupported
    files are a LunarError naming the file.
    """
    from lunar_cli.classes import decode_image_file, to_rgb_uint8

    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise LunarError(f"{path}: unsupported format {path.suffix or '(no suffix)'}; use {' '.join(IMAGE_SUFFIXES)}")
    # The decoder training uses: JPEGs upright by their EXIF orientation, so the mask
    # matches the photo as a viewer shows it and the model sees the sky on top.
    img = decode_image_file(path, "image")
    notes = []
    if img.dtype == np.uint16:
        notes.append("16-bit")
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        notes.append("grayscale")
    elif img.shape[2] == 4:
        notes.append("RGBA (alpha dropped)")
    return to_rgb_uint8(img, str(path)), (" ".join(notes) or None)


def classify(logits: "torch.Tensor", want_probs: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Return (class indices (H, W) uint8, softmax probabilities (C, H, W) float16 or None) of logits (C, H, W)."""
    import torch

    with torch.inference_mode():
        indices = predicted_classes(logits, dim=0).to(torch.uint8).cpu().numpy()
        probs = logits.float().softmax(0).half().cpu().numpy() if want_probs else None
    return indices, probs


def overlay(photo: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Return the photo with class colours blended in (ground, black in the palette, is left as it is)."""
    blended = photo.astype(np.float32)
    coloured = indices != 0  # blending black would only darken the ground
    blended[coloured] = (1 - OVERLAY_ALPHA) * blended[coloured] + OVERLAY_ALPHA * encode_mask(indices)[coloured]
    return blended.round().astype(np.uint8)


def write_outputs(
    targets: dict[str, str | None], fmt: str, photo: np.ndarray | None, indices: np.ndarray,
    probs: np.ndarray | None, class_names: list[str], hazard_margin: int,
) -> tuple[list[str], dict[str, Any] | None]:  # fmt: skip
    """Write the mask (and hazard map) atomically; return (files written, hazard summary or None)."""
    from lunar_cli.classes import write_png_atomic
    from lunar_cli.files import atomic_path

    mask_path = Path(targets["mask"])
    if fmt == "rgb":
        write_png_atomic(mask_path, encode_mask(indices))
    elif fmt == "index":
        write_png_atomic(mask_path, indices)
    elif fmt == "overlay":
        write_png_atomic(mask_path, overlay(photo, indices))
    else:
        with atomic_path(mask_path) as tmp, open(tmp, "wb") as fh:  # a file object: savez would add ".npz"
            np.savez_compressed(fh, probs=probs, classes=np.array(class_names))
    written = [str(mask_path)]
    summary = None
    if targets.get("hazard"):
        from lunar_cli.hazard import assess_hazard, hazard_image

        summary, hazard, safe = assess_hazard(indices, hazard_margin)
        write_png_atomic(Path(targets["hazard"]), hazard_image(hazard, safe, summary["largest_safe_region"]))
        written.append(targets["hazard"])
    return written, summary


def _make_plan(inputs, output, model, runs_dir, fmt, hazard) -> dict[str, Any]:
    """Return the whole job as plain values (inputs, output files, model, problems), for rank 0 to share."""
    from lunar_cli.engine import find_model

    paths, problems = collect_inputs(inputs)
    if not paths:
        if problems:
            raise LunarError(problems[0]["reason"] + ("" if len(problems) == 1 else f" (and {len(problems) - 1} more)"))
        raise LunarError(f"no images found in {' '.join(inputs)}: give image files, folders or patterns")
    plan = plan_outputs(paths, output, fmt, hazard)
    model_path, auto = find_model(model, runs_dir)
    return {"inputs": [str(p) for p in paths], "targets": plan, "problems": problems,
            "model": str(model_path), "auto": auto}  # fmt: skip


def _shared_plan(dist, make) -> dict[str, Any]:
    """Return ``make()`` computed on rank 0 and sent to every rank (its LunarError raised on all)."""
    from lunar_cli.runtime import broadcast

    payload: dict[str, Any] = {}
    if dist.is_main:
        try:
            payload = make()
        except LunarError as exc:
            if not dist.enabled:
                raise
            payload = {"error": str(exc), "exit_code": exc.exit_code}
    payload = broadcast(payload, dist)
    if "error" in payload:
        raise LunarError(payload["error"], payload["exit_code"])
    return payload


def run_predict(
    inputs: list[str], *, output: Path, model: Path | None, runs_dir: Path, fmt: str = "rgb",
    tile: bool = False, tile_overlap: float = 0.25, hazard: bool = False, hazard_margin: int = 15,
    batch_size: int = 8, device: str = "auto", amp: bool | None = None, channels_last: bool | None = None,
    strict: bool = False, progress: bool = True,
) -> dict:  # fmt: skip
    """Predict masks for the inputs; return {"model":..., "records": [...], "failed": [...], "written": n}.

    Each record: input, output files, width, height, class_fractions, seconds (and
    hazard when asked). Files that cannot be read are warned about, skipped and listed
    in ``failed``; with ``strict`` the first one stops the batch with a LunarError
    (outputs already written stay). Under torchrun rank 0 returns every rank's
    records, in input order; other ranks return their own.
    """
    import torch

    from lunar_cli.engine import load_model
    from lunar_cli.runtime import setup_distributed, teardown_distributed

    dist, dev = setup_distributed(device)
    try:
        plan = _shared_plan(dist, lambda: _make_plan(inputs, output, model, runs_dir, fmt, hazard))
        if dist.is_main:
            if plan["auto"]:
                info(f"using model {plan['model']} (newest under {runs_dir}/)")
        if strict and plan["problems"]:
            raise LunarError(f"{plan['problems'][0]['reason']} (--strict: nothing predicted)")
        for problem in plan["problems"] if dist.is_main else []:
            warn(problem["reason"])
        model_ = load_model(Path(plan["model"]), dev, amp, channels_last)
        if dev.type == "cuda" and not tile:
            torch.backends.cudnn.benchmark = True  # every batch has the model's fixed input size
        jobs = list(range(len(plan["inputs"])))[dist.rank :: dist.world_size]
        done, failed = _predict_share(model_, plan, jobs, fmt=fmt, tile=tile, tile_overlap=tile_overlap,
                                      hazard_margin=hazard_margin, batch_size=batch_size,
                                      strict=strict, progress=progress and dist.is_main)  # fmt: skip
        everyone_failed = failed
        if dist.enabled:
            done, failed, everyone_failed = _gather(dist, done, failed)
        if strict and everyone_failed:
            first = min(everyone_failed, key=lambda f: f["order"])
            raise LunarError(f"{first['reason']} (--strict: stopped; outputs already written are kept)")
        failed = (plan["problems"] if dist.is_main else []) + [
            {"input": f["input"], "reason": f["reason"]} for f in sorted(failed, key=lambda f: f["order"])
        ]
        records = [record for _, record in sorted(done, key=lambda pair: pair[0])]
        return {"model": plan["model"], "records": records, "failed": failed,
                "written": sum(len(r["output"]) for r in records)}  # fmt: skip
    finally:
        teardown_distributed(dist)


def _gather(dist, done: list, failed: list) -> tuple[list, list, list]:
    """Return (done, failed) merged over ranks on rank 0 (this rank's own elsewhere), and every rank's failures.

    Every rank learns of every failure so that --strict stops all of them alike.
    """
    import torch.distributed as tdist

    everything: list[Any] = [None] * dist.world_size
    tdist.all_gather_object(everything, (done, failed))
    everyone_failed = [f for _, rank_failed in everything for f in rank_failed]
    if not dist.is_main:
        return done, failed, everyone_failed
    return [pair for rank_done, _ in everything for pair in rank_done], everyone_failed, everyone_failed


def _predict_share(
    model: "Model", plan: dict[str, Any], jobs: list[int], *, fmt: str, tile: bool, tile_overlap: float,
    hazard_margin: int, batch_size: int, strict: bool, progress: bool,
) -> tuple[list[tuple[int, dict]], list[dict[str, Any]]]:  # fmt: skip
    """Predict the inputs numbered ``jobs``; return ([(job, record)], failures)."""
    import cv2

    from lunar_cli.engine import photo_logits, tiled_logits

    class_names = model.class_names
    done: list[tuple[int, dict]] = []
    failed: list[dict[str, Any]] = []
    said: set[str] = set()
    pending: list[tuple[int, np.ndarray, float]] = []  # (job, photo, seconds spent reading it)

    def finish(job: int, photo: np.ndarray, logits, seconds: float) -> None:
        start = time.perf_counter()
        height, width = photo.shape[:2]
        indices, probs = classify(logits, want_probs=fmt == "probs")
        files, hazard_summary = write_outputs(
            plan["targets"][job], fmt, photo, indices, probs, class_names, hazard_margin
        )
        counts = np.bincount(indices.ravel(), minlength=len(class_names))
        record = {
            "input": plan["inputs"][job],
            "output": files,
            "width": width,
            "height": height,
            "class_fractions": {name: round(float(c) / indices.size, 6) for name, c in zip(class_names, counts)},
            "seconds": round(seconds + time.perf_counter() - start, 4),
        }
        if hazard_summary is not None:
            record["hazard"] = hazard_summary
        done.append((job, record))

    def flush() -> None:
        if not pending:
            return
        start = time.perf_counter()
        logits = photo_logits(model, [photo for _, photo, _ in pending])
        share = (time.perf_counter() - start) / len(pending)
        for (job, photo, read_seconds), image_logits in zip(pending, logits):
            finish(job, photo, image_logits, read_seconds + share)
        pending.clear()

    for job in track(jobs, "predicting", total=len(jobs), quiet=not progress):
        path = plan["inputs"][job]
        start = time.perf_counter()
        try:
            photo, note = read_photo(Path(path))
        except (LunarError, cv2.error, OSError) as exc:
            reason = str(exc).splitlines()[0] if isinstance(exc, LunarError) else f"{path}: cannot read ({exc})"
            if not strict:  # under --strict the error itself says it
                warn(reason)
            failed.append({"input": path, "reason": reason, "order": job})
            if strict:
                break
            continue
        if note and note not in said:
            said.add(note)
            warn(f"{path}: {note} photo, converted to 8-bit RGB (said once for all such photos)")
        h, w = model.frame_size.of(*photo.shape[:2])
        if not tile and h * w > 64 * model.window**2 and "large" not in said:
            said.add("large")
            info(f"{path} is {photo.shape[1]}x{photo.shape[0]} ({w}x{h} at the model's scale): "
                 "--tile bounds the memory it takes")  # fmt: skip
        seconds = time.perf_counter() - start
        if tile:
            start = time.perf_counter()
            logits = tiled_logits(model, photo, tile_overlap, batch_size)
            finish(job, photo, logits, seconds + time.perf_counter() - start)
        else:
            if pending and pending[0][1].shape != photo.shape:  # a batch holds photos of one size
                flush()
            pending.append((job, photo, seconds))
            if len(pending) >= batch_size:
                flush()
    flush()
    return done, failed
