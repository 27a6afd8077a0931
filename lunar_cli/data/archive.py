"""Safe zip extraction: nothing an archive holds can land outside the folder it is unpacked into.

Entries that would escape (``..`` components, absolute paths, drive letters, symbolic
links) are refused before anything is written, and the unpacked size is checked against
the free disk space first. Every zip lunar opens goes through ``safe_extract_zip``.
"""

from __future__ import annotations

import re
import shutil
import stat
import zipfile
import zlib
from pathlib import Path

from lunar_cli.console import LunarError, track
from lunar_cli.data.remote import CHUNK, short_reason


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
        raise LunarError(f"{archive}: not a readable zip archive ({short_reason(exc)}); download it again") from exc
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
            why = short_reason(exc)
            raise LunarError(f"{archive}: unpacking failed ({why}); download it again or free disk space") from exc
