"""Put the Artificial Lunar Landscape dataset under a data directory, and trained checkpoints under models/.

The dataset keeps its original Kaggle layout::

    images/render/renderNNNN.png   images/clean/cleanNNNN.png   images/ground/groundNNNN.png
    real_moon_images/PCAM1.png ... and their masks g_PCAM1.png ...

``dataset.json`` is the validity marker: it is deleted first and written last, so a fetch
that dies halfway never leaves a folder that later looks like a dataset. Everything is
staged in ``<data_dir>/.fetch-XXXX.partial`` (same disk, so moving into place is a rename)
and that folder is removed whatever happens.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import zipfile
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable
from urllib.error import HTTPError, URLError

from lunar_cli.config import KAGGLE_DATASET
from lunar_cli.console import LunarError, info, track, warn
from lunar_cli.files import write_json_atomic

if TYPE_CHECKING:
    from lunar_cli.config import FetchConfig

DATASET_PARTS = ("images", "real_moon_images")  # the folders a fetch moves into data_dir
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
MARKER = "dataset.json"
DRIVE_ID = re.compile(r"^[A-Za-z0-9_-]{20,}$")  # a bare Google Drive file id
CHUNK = 1 << 20
NET_MODULES = {"requests", "urllib3", "socket", "ssl"}  # where network errors come from

Downloader = Callable[[str, Path], Path]


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
        raise LunarError(f"{path}: unreadable ({_reason(exc)}): run lunar fetch --force to fetch again") from exc
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


# --- zip safety ------------------------------------------------------------------------


def _member_path(member: zipfile.ZipInfo, base: Path, archive: Path) -> Path | None:
    """Return where member lands under base, or raise if it could escape base."""

    def refuse(why: str) -> LunarError:
        return LunarError(f"{archive}: refusing entry {member.filename!r} ({why}); the archive is unsafe, get it again")

    name = member.filename.replace("\\", "/")  # zips made on Windows may use backslashes
    if stat.S_ISLNK(member.external_attr >> 16):
        raise refuse("a symbolic link")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise refuse("an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise refuse("a '..' path component")
    if not parts:
        return None
    dest = base.joinpath(*parts)
    if not dest.resolve().is_relative_to(base):
        raise refuse("it would land outside the target folder")
    return dest


def safe_extract_zip(archive: Path, target: Path) -> None:
    """Extract archive into target, refusing entries that escape it (zip-slip, absolute paths, symlinks).

    Every entry is checked before anything is written, and the unpacked size is checked
    against the free disk space.
    """
    archive, target = Path(archive), Path(target)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise LunarError(f"{archive}: not a readable zip archive ({_reason(exc)}); download it again") from exc
    with zf:
        target.mkdir(parents=True, exist_ok=True)
        base = target.resolve()
        plan = [(m, _member_path(m, base, archive)) for m in zf.infolist()]
        needed = sum(m.file_size for m in zf.infolist())
        free = shutil.disk_usage(target).free
        if needed > free:
            raise LunarError(
                f"not enough disk space to unpack {archive.name}: needs {needed / 1e9:.1f} GB, "
                f"{free / 1e9:.1f} GB free; free some space or use another data directory"
            )
        try:
            for member, dest in track(plan, f"unpacking {archive.name}", total=len(plan)):
                if dest is None:
                    continue
                if member.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:  # bad CRC, truncated data, full disk
            why = _reason(exc)
            raise LunarError(f"{archive}: unpacking failed ({why}); download it again or free disk space") from exc


# --- downloads -------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    """Return the first line of exc's message, short enough for a one-line error."""
    if isinstance(exc, URLError) and not isinstance(exc, HTTPError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc  # drop the "<urlopen error ...>" wrapper
    lines = str(exc).strip().splitlines()
    text = (lines[0] if lines else "") or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _download_target(spec: str) -> str | None:
    """Return what the downloader gets for spec (a Drive id, a Drive folder URL, an http(s) URL), or None."""
    spec = spec.strip()
    if spec.startswith("drive:"):
        return spec[len("drive:") :]
    if re.match(r"^https?://(drive|docs)\.google\.com/", spec):
        if "/folders/" in spec:
            return spec
        found = re.search(r"/d/([A-Za-z0-9_-]+)", spec) or re.search(r"[?&]id=([A-Za-z0-9_-]+)", spec)
        return found.group(1) if found else spec
    if re.match(r"^https?://", spec) or DRIVE_ID.match(spec):
        return spec
    return None


def _download_http(url: str, dest: Path) -> Path:
    import urllib.parse
    import urllib.request

    from lunar_cli import __version__

    request = urllib.request.Request(url, headers={"User-Agent": f"lunar/{__version__}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        name = response.headers.get_filename() or Path(urllib.parse.urlparse(response.url).path).name
        name = Path(urllib.parse.unquote(name or "")).name
        path = dest / (name if name not in ("", ".", "..") else "download")
        length = int(response.headers.get("Content-Length") or 0)
        chunks = iter(lambda: response.read(CHUNK), b"")
        with open(path, "wb") as out:
            for chunk in track(chunks, f"downloading {path.name}", total=-(-length // CHUNK) or None):
                out.write(chunk)
    return path


def _download_drive(id_or_folder_url: str, dest: Path) -> Path:
    import gdown

    try:
        if "/folders/" in id_or_folder_url:
            got = gdown.download_folder(url=id_or_folder_url, output=str(dest), quiet=False)
            written = dest if got else None
        else:
            got = gdown.download(id=id_or_folder_url, output=str(dest) + os.sep, quiet=False)
            written = Path(got) if got else None
    except OSError:
        raise
    except Exception as exc:  # gdown raises its own errors (6.x) or returns None (4.x)
        raise LunarError(
            f"Google Drive download of {id_or_folder_url} failed ({_reason(exc)}): check the id and that "
            "the file is shared with 'anyone with the link'"
        ) from exc
    if written is None:
        raise LunarError(
            f"Google Drive download of {id_or_folder_url} failed: check the id and that the file is shared "
            "with 'anyone with the link'"
        )
    return written


def download(url_or_id: str, dest: Path) -> Path:
    """Return the file (or Drive folder) downloaded into folder dest from a Drive id/link or an http(s) URL."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if re.match(r"^https?://", url_or_id) and "/folders/" not in url_or_id:
        return _download_http(url_or_id, dest)
    return _download_drive(url_or_id, dest)


def _call_downloader(downloader: Downloader, target: str, dest: Path, fallback: str) -> Path:
    """Return the path downloader(target, dest) wrote; network trouble becomes a one-line LunarError."""
    dest.mkdir(parents=True, exist_ok=True)
    info(f"downloading {target}")
    try:
        got = Path(downloader(target, dest))
    except LunarError:
        raise
    except OSError as exc:  # urllib's URLError/HTTPError, timeouts, requests' errors, a full disk
        why = f"could not download {target} ({_reason(exc)})"
        raise LunarError(f"{why}: check the link and your connection, {fallback}") from exc
    if not got.exists():
        raise LunarError(f"downloading {target} produced nothing: check the link, {fallback}")
    return got


def _default_kaggle_api() -> Any:
    try:
        # Importing kaggle runs its own authenticate(), which prints a help page to stdout
        # when there are no credentials; our own authenticate() call below reports that.
        with contextlib.redirect_stdout(io.StringIO()):
            from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError as exc:
        raise LunarError(f"the kaggle package cannot be imported ({_reason(exc)}): pip install kaggle six") from exc
    return KaggleApi()


def _download_kaggle(slug: str, dest: Path, api_factory: Callable | None) -> Path:
    """Return the dataset zip that the Kaggle API downloaded into dest."""
    page = f"https://www.kaggle.com/datasets/{slug}"
    by_hand = f"or download the zip from {page} in a browser and run lunar fetch --source PATH"
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            api = (api_factory or _default_kaggle_api)()
            api.authenticate()
    except LunarError:
        raise
    except (Exception, SystemExit) as exc:  # kaggle 2.x prints help and calls exit(1); 1.x raises OSError
        offline = isinstance(exc, (ConnectionError, TimeoutError)) or type(exc).__module__.split(".")[0] in NET_MODULES
        if offline:  # a token was found but checking it needs the network
            raise LunarError(f"cannot reach Kaggle ({_reason(exc)}): check your connection, {by_hand}") from exc
        raise LunarError(
            "no usable Kaggle credentials: put your API token in ~/.kaggle/kaggle.json (or ~/.kaggle/access_token) "
            f"or set KAGGLE_USERNAME and KAGGLE_KEY (or KAGGLE_API_TOKEN), {by_hand}"
        ) from exc
    info(f"downloading {slug} from Kaggle")
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout is kept for results (--json)
            api.dataset_download_files(slug, path=str(dest), unzip=False, quiet=False)
    except (Exception, SystemExit) as exc:
        if isinstance(exc, OSError) and getattr(exc, "response", None) is None:
            why = _reason(exc)
            raise LunarError(f"cannot download {slug} from Kaggle ({why}): check your connection, {by_hand}") from exc
        raise LunarError(
            f"Kaggle refused {slug} ({_reason(exc)}): check the dataset name and your token, {by_hand}"
        ) from exc
    zips = sorted(dest.glob("*.zip"))
    if not zips:
        raise LunarError(f"Kaggle gave no zip for {slug}: {by_hand}")
    return zips[0]


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


def _record(source: str, root: Path, counts: dict, extra: dict) -> dict:
    from lunar_cli import __version__

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
        from lunar_cli.data.synthetic import generate_synthetic

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
        archive = _download_kaggle(kaggle_dataset, work / "download", api_factory)
        extra["kaggle_dataset"] = kaggle_dataset
    elif local is not None:
        archive, label = local, str(local.resolve())
    else:
        fallback = "or download the zip in a browser and run lunar fetch --source PATH"
        archive = _call_downloader(downloader or download, _download_target(source), work / "download", fallback)
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
    _refuse_existing(data_dir, force)  # before downloading gigabytes
    data_dir.mkdir(parents=True, exist_ok=True)
    for stale in data_dir.glob(".fetch-*.partial"):  # left by a fetch that was killed outright
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=".fetch-", suffix=".partial", dir=data_dir))
    try:
        root, label, extra = _stage(source, local, work, kaggle_dataset, synthetic, api_factory, downloader)
        counts = validate_layout(root, where=source)
        dataset = _record(label, root, counts, extra)
        _install(root, data_dir, dataset, work / "old")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info(f"dataset in {data_dir}/: {counts['render']} renders, {counts['real_images']} real photos")
    return dataset


# --- trained checkpoints ---------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _files_under(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith((".", "__MACOSX")) for part in p.relative_to(folder).parts)
    )


def fetch_models(
    spec: str, models_dir: Path, *, checksum: str | None = None, downloader: Callable | None = None
) -> list[Path]:
    """Download trained checkpoints from a URL or Google Drive id into models_dir; return the files written.

    spec: a Drive id, drive:<ID>, a drive.google.com file or folder link, or an http(s) URL.
    A downloaded .zip is unpacked (safely, one top folder stripped). With ``checksum``
    (sha256 of the downloaded file) a mismatch is an error and nothing is kept.
    """
    models_dir = Path(models_dir)
    target = _download_target(spec)
    if target is None:
        raise LunarError(f"models {spec!r}: expected an http(s) URL, a Google Drive link, drive:<ID> or a Drive id")
    expected = None
    if checksum:
        expected = checksum.strip().lower().removeprefix("sha256:")
        if not re.fullmatch(r"[0-9a-f]{64}", expected):
            raise LunarError(f"checksum {checksum!r}: expected 64 hex digits (a sha256)")
    models_dir.mkdir(parents=True, exist_ok=True)
    for stale in models_dir.glob(".fetch-models-*.partial"):  # left by a fetch that was killed outright
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=".fetch-models-", suffix=".partial", dir=models_dir))
    try:
        fallback = f"or download the checkpoints by hand into {models_dir}/"
        got = _call_downloader(downloader or download, target, work / "download", fallback)
        if expected is not None:
            if not got.is_file():
                raise LunarError(f"models {spec}: a checksum needs a single downloaded file, got a folder")
            actual = _sha256_file(got)
            if actual != expected:
                raise LunarError(
                    f"{got.name} from {spec} has sha256 {actual}, expected {expected}: the download is "
                    "damaged or the link or checksum is wrong; nothing was kept"
                )
        if got.is_file() and zipfile.is_zipfile(got):
            safe_extract_zip(got, work / "unzipped")
            folder = work / "unzipped"
            entries = [p for p in folder.iterdir() if not p.name.startswith((".", "__MACOSX"))]
            if len(entries) == 1 and entries[0].is_dir():  # zips usually wrap everything in one folder
                folder = entries[0]
            files = _files_under(folder)
        elif got.is_dir():  # a Drive folder
            folder, files = got, _files_under(got)
        else:
            folder, files = got.parent, [got]
        if not files:
            raise LunarError(f"models {spec}: the download holds no files")
        written = []
        for path in files:
            dest = models_dir / path.relative_to(folder)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)  # same disk: each checkpoint appears whole
            written.append(dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info(f"{len(written)} checkpoint file(s) in {models_dir}/")
    return written


def run_fetch(cfg: "FetchConfig", *, data_dir: Path, seed: int, dataset: bool = True) -> dict:
    """Do what ``lunar fetch`` was asked: the dataset (unless ``dataset`` is False) and any --models."""
    result: dict[str, Any] = {"data_dir": str(data_dir)}
    if dataset:
        synthetic = {
            "count": cfg.count, "real_count": cfg.real_count, "width": cfg.width, "height": cfg.height, "seed": seed,
        }  # fmt: skip
        result["dataset"] = fetch_dataset(
            cfg.source, Path(data_dir), force=cfg.force, kaggle_dataset=cfg.kaggle_dataset, synthetic=synthetic
        )
    if cfg.models:
        result["models"] = [str(p) for p in fetch_models(cfg.models, Path(cfg.models_dir), checksum=cfg.checksum)]
    return result
