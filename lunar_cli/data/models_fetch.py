"""Trained checkpoints from a URL or Google Drive into models/, checked against a sha256 when given.

Everything is staged in ``<models_dir>/.fetch-models-XXXX.partial`` (same disk, so each
checkpoint appears whole by a rename) and that folder is removed whatever happens.
"""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
from pathlib import Path
from typing import Callable

from lunar_cli.console import LunarError, info
from lunar_cli.data.archive import safe_extract_zip
from lunar_cli.data.remote import CHUNK, call_downloader, download, download_target
from lunar_cli.files import staging_dir


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
    target = download_target(spec)
    if target is None:
        raise LunarError(f"models {spec!r}: expected an http(s) URL, a Google Drive link, drive:<ID> or a Drive id")
    expected = None
    if checksum:
        expected = checksum.strip().lower().removeprefix("sha256:")
        if not re.fullmatch(r"[0-9a-f]{64}", expected):
            raise LunarError(f"checksum {checksum!r}: expected 64 hex digits (a sha256)")
    with staging_dir(models_dir, "fetch-models", clear_stale=True) as work:
        fallback = f"or download the checkpoints by hand into {models_dir}/"
        got = call_downloader(downloader or download, target, work / "download", fallback)
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
    info(f"{len(written)} checkpoint file(s) in {models_dir}/")
    return written
