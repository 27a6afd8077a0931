"""Files from elsewhere: http(s) URLs, Google Drive (gdown) and the Kaggle API.

Each source's own failures (no network, a refused token, a private Drive file) become one
LunarError line that says what to do, including how to get the file by hand instead.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable
from urllib.error import HTTPError, URLError

from lunar_cli import __version__
from lunar_cli.console import LunarError, first_line, info, track

DRIVE_ID = re.compile(r"^[A-Za-z0-9_-]{20,}$")  # a bare Google Drive file id
CHUNK = 1 << 20  # bytes read or written at a time
NET_MODULES = {"requests", "urllib3", "socket", "ssl"}  # where network errors come from

Downloader = Callable[[str, Path], Path]


def short_reason(exc: BaseException) -> str:
    """Return the first line of exc's message, short enough for a one-line error."""
    if isinstance(exc, URLError) and not isinstance(exc, HTTPError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc  # drop the "<urlopen error ...>" wrapper
    return first_line(exc)


def download_target(spec: str) -> str | None:
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
    import gdown  # only when downloading from Google Drive or Kaggle

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
            f"Google Drive download of {id_or_folder_url} failed ({short_reason(exc)}): check the id and that "
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


def call_downloader(downloader: Downloader, target: str, dest: Path, fallback: str) -> Path:
    """Return the path downloader(target, dest) wrote; network trouble becomes a one-line LunarError."""
    dest.mkdir(parents=True, exist_ok=True)
    info(f"downloading {target}")
    try:
        got = Path(downloader(target, dest))
    except LunarError:
        raise
    except OSError as exc:  # urllib's URLError/HTTPError, timeouts, requests' errors, a full disk
        why = f"could not download {target} ({short_reason(exc)})"
        raise LunarError(f"{why}: check the link and your connection, {fallback}") from exc
    if not got.exists():
        raise LunarError(f"downloading {target} produced nothing: check the link, {fallback}")
    return got


def _default_kaggle_api() -> Any:
    try:
        # Importing kaggle runs its own authenticate(), which prints a help page to stdout
        # when there are no credentials; our own authenticate() call below reports that.
        with contextlib.redirect_stdout(io.StringIO()):
            from kaggle.api.kaggle_api_extended import KaggleApi  # only when downloading from Google Drive or Kaggle
    except ImportError as exc:
        why = short_reason(exc)
        raise LunarError(f"the kaggle package cannot be imported ({why}): pip install kaggle six") from exc
    return KaggleApi()


def download_kaggle(slug: str, dest: Path, api_factory: Callable | None) -> Path:
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
            raise LunarError(f"cannot reach Kaggle ({short_reason(exc)}): check your connection, {by_hand}") from exc
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
            why = short_reason(exc)
            raise LunarError(f"cannot download {slug} from Kaggle ({why}): check your connection, {by_hand}") from exc
        raise LunarError(
            f"Kaggle refused {slug} ({short_reason(exc)}): check the dataset name and your token, {by_hand}"
        ) from exc
    zips = sorted(dest.glob("*.zip"))
    if not zips:
        raise LunarError(f"Kaggle gave no zip for {slug}: {by_hand}")
    return zips[0]
