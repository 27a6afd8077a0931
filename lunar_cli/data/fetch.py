"""Put the Artificial Lunar Landscape dataset under a data directory.

The dataset keeps its original Kaggle layout::

    images/render/renderNNNN.png   images/clean/cleanNNNN.png   images/ground/groundNNNN.png
    real_moon_images/PCAM1.png ... and their masks g_PCAM1.png ...

``dataset.json`` is the validity marker: it is deleted first and written last, so a fetch
that dies halfway never leaves a folder that later looks like a dataset. Everything is
staged in ``<data_dir>/.fetch-XXXX.partial`` (same disk, so moving into place is a rename)
and that folder is removed whatever happens. Downloads are in ``remote``, unpacking in
``archive``, trained checkpoints in ``models_fetch``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from lunar_cli import __version__
from lunar_cli.classes import IMAGE_SUFFIXES
from lunar_cli.config import KAGGLE_DATASET, Config
from lunar_cli.console import LunarError, info, warn
from lunar_cli.data.archive import safe_extract_zip
from lunar_cli.data.models_fetch import fetch_models
from lunar_cli.data.remote import call_downloader, download, download_kaggle, download_target, short_reason
from lunar_cli.data.synthetic import generate_synthetic
from lunar_cli.files import staging_dir, write_json_atomic

DATASET_PARTS = ("images", "real_moon_images")  # the folders a fetch moves into data_dir
MARKER = "dataset.json"


# --- reading what is there ------------------------------------------------------------


def read_dataset_info(data_dir: Path) -> dict:
    """Return the dataset.json of data_dir, or raise LunarError saying to run lunar fetch."""
    data_dir = Path(data_dir)
    path = data_dir / MARKER
    if not path.is_file():
        raise LunarError(f"no dataset in {data_dir}/: run lunar fetch --source synthetic")
    try:
        dataset = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LunarError(f"{path}: unreadable ({short_reason(exc)}): run lunar fetch --force to fetch again") from exc
    if not isinstance(dataset, dict) or not isinstance(dataset.get("counts"), dict):
        raise LunarError(f"{path}: not a lunar dataset record: run lunar fetch --force to fetch again")
    if not (data_dir / "images" / "render").is_dir():
        raise LunarError(f"{path} exists but {data_dir}/images/render does not: run lunar fetch --force")
    return dataset


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]


def validate_layout(root: Path, *, where: str | None = None) -> dict:
    """Return counts of the dataset under root, or raise LunarError naming the missing part.

    ``where`` names the dataset in messages (e.g. the zip the user gave) instead of ``root``.
    """
    root = Path(root)
    where = where or str(root)
    real = _image_files(root / "real_moon_images")
    counts = {
        "render": len(_image_files(root / "images" / "render")),
        "clean": len(_image_files(root / "images" / "clean")),
        "ground": len(_image_files(root / "images" / "ground")),
        "real_images": sum(not p.name.startswith("g_") for p in real),
        "real_masks": sum(p.name.startswith("g_") for p in real),
    }
    expected = "expected the Kaggle layout images/render, images/clean, real_moon_images"
    if counts["render"] == 0:
        raise LunarError(f"{where}: images/render is missing or has no images; {expected}")
    if counts["clean"] == 0 and counts["ground"] == 0:
        raise LunarError(f"{where}: images/clean (or images/ground) is missing or has no masks; {expected}")
    # Mismatches are reported, not fatal: `lunar split` pairs files by number and says which lack a mate.
    for masks in ("clean", "ground"):
        if counts[masks] and counts[masks] != counts["render"]:
            warn(f"{where}: {counts['render']} renders but {counts[masks]} images/{masks} masks")
    if not (root / "real_moon_images").is_dir():
        warn(f"{where}: no real_moon_images folder; there will be no real-photo test set")
    elif counts["real_images"] != counts["real_masks"]:
        warn(f"{where}: {counts['real_images']} real photos but {counts['real_masks']} g_* masks")
    return counts


def _file_list_sha256(root: Path) -> str:
    """Return the sha256 of sorted "relpath<TAB>size" lines of every image file under root's dataset parts."""
    lines = []
    for part in DATASET_PARTS:
        for path in (root / part).rglob("*"):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                lines.append(f"{path.relative_to(root).as_posix()}\t{path.stat().st_size}\n")
    # surrogateescape: a file name that is not UTF-8 hashes as its raw bytes instead of crashing.
    return hashlib.sha256("".join(sorted(lines)).encode("utf-8", "surrogateescape")).hexdigest()


def _find_root(top: Path, where: str) -> Path:
    """Return the folder under top (itself or up to two levels down) that holds images/render."""
    level = [top]
    for _ in range(3):
        for folder in level:
            if (folder / "images" / "render").is_dir():
                return folder
        level = sorted(
            child
            for folder in level
            for child in folder.iterdir()
            if child.is_dir() and not child.name.startswith((".", "__MACOSX"))
        )
    raise LunarError(
        f"{where}: no images/render folder found (looked two levels deep); "
        "expected the Kaggle layout images/render, images/clean, real_moon_images"
    )


# --- putting the dataset in place ------------------------------------------------------


def _link_or_copy(src: str, dst: str) -> str:
    # Hard links make a local folder "copy" instant and free; other disks get a real copy.
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def _refuse_existing(data_dir: Path, force: bool) -> None:
    marker = data_dir / MARKER
    if force:
        return
    if marker.exists():
        try:
            counts = json.loads(marker.read_text(encoding="utf-8"))["counts"]
            n = f"{counts['render'] + counts['real_images']} images"
        except (OSError, ValueError, KeyError, TypeError):
            n = "unreadable dataset.json"
        raise LunarError(f"dataset already in {data_dir}/ ({n}): pass --force to replace it")
    for part in DATASET_PARTS:
        if (data_dir / part).exists():
            raise LunarError(
                f"{data_dir}/{part} exists without {data_dir}/{MARKER} (an interrupted fetch?): "
                "pass --force to replace it"
            )


def _refuse_copy_into_itself(root: Path, data_dir: Path) -> None:
    """Refuse a data folder inside the folders it is copied from: the copy would grow as it is made."""
    target = data_dir.resolve()
    for part in DATASET_PARTS:
        if (root / part).is_dir() and target.is_relative_to((root / part).resolve()):
            raise LunarError(f"--data-dir {data_dir} is inside {root / part}, which it would copy into itself; "
                             "choose a data folder outside the dataset")  # fmt: skip


def _record(source: str, root: Path, counts: dict, extra: dict) -> dict:
    return {
        "source": source,
        **extra,
        "counts": counts,
        "file_list_sha256": _file_list_sha256(root),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "lunar_version": __version__,
    }


def _install(root: Path, data_dir: Path, dataset: dict, trash: Path) -> None:
    """Move root's dataset parts into data_dir (old ones go to trash) and write dataset.json last."""
    marker = data_dir / MARKER
    replacing = marker.exists() or any((data_dir / p).exists() for p in DATASET_PARTS)
    marker.unlink(missing_ok=True)  # from here on nothing looks valid until the new marker exists
    if replacing:
        (data_dir / "manifest.csv").unlink(missing_ok=True)  # it lists the old files
    trash.mkdir(parents=True, exist_ok=True)
    for part in DATASET_PARTS:
        dest = data_dir / part
        if dest.exists() or dest.is_symlink():
            os.replace(dest, trash / part)
        if (root / part).exists():
            os.replace(root / part, dest)
    write_json_atomic(marker, dataset)


def _register_in_place(data_dir: Path, source: str, force: bool) -> dict:
    """Write dataset.json for a dataset the user already unpacked into data_dir itself."""
    marker = data_dir / MARKER
    old_sha = None
    if marker.exists():
        _refuse_existing(data_dir, force)
        with contextlib.suppress(OSError, ValueError, AttributeError):
            old_sha = json.loads(marker.read_text(encoding="utf-8")).get("file_list_sha256")
    dataset = _record(source, data_dir, validate_layout(data_dir), {})
    if not marker.exists() or dataset["file_list_sha256"] != old_sha:
        (data_dir / "manifest.csv").unlink(missing_ok=True)  # it may list other files
    write_json_atomic(marker, dataset)
    return dataset


def _stage(
    source: str,
    local: Path | None,
    work: Path,
    kaggle_dataset: str,
    synthetic: dict | None,
    api_factory: Callable | None,
    downloader: Callable | None,
) -> tuple[Path, str, dict]:
    """Get source into work; return (the folder holding images/, the source to record, extra record fields)."""
    if source == "synthetic":
        params = dict(synthetic or {})
        generate_synthetic(work / "synthetic", **params)
        recorded = {k: v for k, v in params.items() if k not in ("workers", "progress")}
        return work / "synthetic", source, {"synthetic": recorded}
    if local is not None and local.is_dir():
        root = _find_root(local, source)
        info(f"copying the dataset from {root}")
        for part in DATASET_PARTS:
            if (root / part).is_dir():
                shutil.copytree(root / part, work / "copy" / part, copy_function=_link_or_copy)
        return work / "copy", str(local.resolve()), {}
    extra: dict = {}
    label = source
    if source == "kaggle":
        archive = download_kaggle(kaggle_dataset, work / "download", api_factory)
        extra["kaggle_dataset"] = kaggle_dataset
    elif local is not None:
        archive, label = local, str(local.resolve())
    else:
        fallback = "or download the zip in a browser and run lunar fetch --source PATH"
        archive = call_downloader(downloader or download, download_target(source), work / "download", fallback)
    if not archive.is_file() or not zipfile.is_zipfile(archive):
        raise LunarError(f"{source}: not a zip archive (damaged or incomplete download?); download it again")
    safe_extract_zip(archive, work / "extract")
    return _find_root(work / "extract", source), label, extra


def fetch_dataset(
    source: str,
    data_dir: Path,
    *,
    force: bool = False,
    kaggle_dataset: str = KAGGLE_DATASET,
    synthetic: dict | None = None,
    api_factory: Callable | None = None,
    downloader: Callable | None = None,
) -> dict:
    """Put the dataset under data_dir from `source`; return the dataset.json content.

    source: "synthetic", "kaggle", a path to a .zip or an unpacked folder, "drive:<ID>",
    or an http(s) URL of a zip. ``synthetic`` holds generate_synthetic's keyword arguments;
    ``api_factory`` and ``downloader`` stand in for the Kaggle API and the downloader.
    """
    data_dir = Path(data_dir)
    local = None
    # Only explicit drive:/http(s) sources are remote: a folder name can look like a bare Drive id.
    if source not in ("synthetic", "kaggle") and not re.match(r"^(drive:|https?://)", source):
        local = Path(source).expanduser()
        if not local.exists():
            raise LunarError(
                f"--source {source}: no such file or folder; use synthetic, kaggle, a .zip, a folder, "
                "drive:<ID> or an http(s) URL"
            )
        if local.is_dir() and _find_root(local, source).resolve() == data_dir.resolve():
            return _register_in_place(data_dir, str(local.resolve()), force)
        if local.is_dir():
            _refuse_copy_into_itself(_find_root(local, source), data_dir)
    _refuse_existing(data_dir, force)  # before downloading gigabytes
    with staging_dir(data_dir, "fetch", clear_stale=True) as work:
        root, label, extra = _stage(source, local, work, kaggle_dataset, synthetic, api_factory, downloader)
        counts = validate_layout(root, where=source)
        dataset = _record(label, root, counts, extra)
        _install(root, data_dir, dataset, work / "old")
    info(f"dataset in {data_dir}/: {counts['render']} renders, {counts['real_images']} real photos")
    return dataset


def run_fetch(cfg: Config) -> dict:
    """Do what ``lunar fetch`` was asked: the dataset, and any --models.

    The dataset comes from ``fetch.source``; with none named it is the synthetic one,
    unless only --models was asked for (then no dataset is touched).
    """
    f = cfg.fetch
    source = f.source or (None if f.models else "synthetic")
    result: dict[str, Any] = {"data_dir": str(cfg.data_dir)}
    if source is not None:
        synthetic = {"count": f.count, "real_count": f.real_count, "width": f.width, "height": f.height, "seed": cfg.seed}
        result["dataset"] = fetch_dataset(source, Path(cfg.data_dir), force=f.force, kaggle_dataset=f.kaggle_dataset,
                                          synthetic=synthetic)  # fmt: skip
    if f.models:
        result["models"] = [str(p) for p in fetch_models(f.models, Path(f.models_dir), checksum=f.checksum)]
    return result
