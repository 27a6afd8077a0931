"""lunar fetch: local zips and folders, Kaggle and HTTP stand-ins, unsafe archives, atomicity, checkpoints."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import stat
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lunar_cli.config import KAGGLE_DATASET
from lunar_cli.console import LunarError
from lunar_cli.data.archive import safe_extract_zip
from lunar_cli.data.fetch import fetch_dataset, read_dataset_info, validate_layout
from lunar_cli.data.models_fetch import fetch_models


def png(path: Path, seed: int, channels: int = 3) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(6, 8, channels), dtype=np.uint8)
    assert cv2.imwrite(str(path), pixels)


def make_layout(root: Path, renders: int = 3, real: int = 2, clean: int | None = None, ground: bool = True) -> Path:
    """Write a tiny dataset in the Kaggle layout under root; return root."""
    for i in range(1, renders + 1):
        png(root / "images" / "render" / f"render{i:04d}.png", i)
        if ground:
            png(root / "images" / "ground" / f"ground{i:04d}.png", 100 + i)
    for i in range(1, (renders if clean is None else clean) + 1):
        png(root / "images" / "clean" / f"clean{i:04d}.png", 200 + i)
    for i in range(1, real + 1):
        png(root / "real_moon_images" / f"PCAM{i}.png", 300 + i)
        png(root / "real_moon_images" / f"g_PCAM{i}.png", 400 + i)
    return root


def zip_folder(folder: Path, archive: Path, prefix: str = "", extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, prefix + path.relative_to(folder).as_posix())
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return archive


def leftovers(data_dir: Path) -> list[str]:
    return sorted(p.name for p in data_dir.glob(".*") if p.name.startswith(".fetch"))


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    return make_layout(tmp_path / "src")


def test_zip_with_layout_at_root_lands_in_original_layout(tmp_path, layout):
    archive = zip_folder(layout, tmp_path / "lunar.zip")
    data = tmp_path / "data"

    dataset = fetch_dataset(str(archive), data)

    assert (data / "images" / "render" / "render0003.png").is_file()
    assert (data / "images" / "clean" / "clean0001.png").is_file()
    assert (data / "real_moon_images" / "g_PCAM2.png").is_file()
    assert dataset["counts"] == {"render": 3, "clean": 3, "ground": 3, "real_images": 2, "real_masks": 2}
    assert json.loads((data / "dataset.json").read_text()) == dataset
    assert read_dataset_info(data) == dataset
    assert dataset["source"] == str(archive.resolve())
    assert len(dataset["file_list_sha256"]) == 64
    assert leftovers(data) == []


def test_zip_nested_in_one_folder_with_extra_files(tmp_path, layout):
    archive = zip_folder(layout, tmp_path / "archive.zip", prefix="Artificial Lunar/", extra={
        "Artificial Lunar/bounding_boxes.csv": b"frame,x,y\n", "readme.txt": b"hi"})
    data = tmp_path / "data"

    dataset = fetch_dataset(str(archive), data)

    assert dataset["counts"]["render"] == 3
    assert (data / "images" / "ground" / "ground0002.png").is_file()
    assert not (data / "Artificial Lunar").exists()
    assert leftovers(data) == []


def test_local_folder_is_copied_and_source_kept(tmp_path, layout):
    data = tmp_path / "data"
    dataset = fetch_dataset(str(tmp_path / "src"), data)
    assert dataset["counts"]["clean"] == 3
    assert (data / "images" / "render" / "render0001.png").read_bytes() == (
        layout / "images" / "render" / "render0001.png").read_bytes()

    # Replacing the dataset must not touch the folder it was copied from.
    fetch_dataset(str(zip_folder(make_layout(tmp_path / "other", renders=1), tmp_path / "o.zip")), data, force=True)
    assert len(list((layout / "images" / "render").iterdir())) == 3
    assert read_dataset_info(data)["counts"]["render"] == 1


def test_folder_named_like_a_drive_id_is_still_local(tmp_path, monkeypatch):
    make_layout(tmp_path / "artificial-lunar-rocky-landscape-dataset")
    monkeypatch.chdir(tmp_path)
    dataset = fetch_dataset("artificial-lunar-rocky-landscape-dataset", Path("data"))
    assert dataset["counts"]["render"] == 3 and (tmp_path / "data" / "dataset.json").is_file()


def test_folder_already_in_data_dir_is_registered_in_place(tmp_path):
    data = make_layout(tmp_path / "data")
    dataset = fetch_dataset(str(data), data)
    assert dataset["counts"]["render"] == 3
    assert (data / "images" / "render" / "render0001.png").is_file()
    assert leftovers(data) == []


def test_checksum_stable_across_fetches_and_changes_with_the_data(tmp_path, layout):
    archive = zip_folder(layout, tmp_path / "lunar.zip")
    first = fetch_dataset(str(archive), tmp_path / "a")
    second = fetch_dataset(str(layout), tmp_path / "b")
    again = fetch_dataset(str(archive), tmp_path / "a", force=True)
    assert first["file_list_sha256"] == second["file_list_sha256"] == again["file_list_sha256"]
    assert first["counts"] == second["counts"]

    png(layout / "images" / "render" / "render0004.png", 9)
    changed = fetch_dataset(str(layout), tmp_path / "c")
    assert changed["file_list_sha256"] != first["file_list_sha256"]


@pytest.mark.parametrize("entry", ["../evil.png", "images/../../evil.png", "/tmp/lunar-evil.png", "C:\\evil.png"])
def test_unsafe_entry_refused_and_nothing_written(tmp_path, layout, entry):
    archive = zip_folder(layout, tmp_path / "bad.zip", extra={entry: b"x"})
    data = tmp_path / "data"
    with pytest.raises(LunarError, match="refusing entry") as caught:
        fetch_dataset(str(archive), data)
    assert repr(entry) in str(caught.value)
    assert not (tmp_path / "evil.png").exists() and not Path("/tmp/lunar-evil.png").exists()
    assert not (data / "dataset.json").exists() and not (data / "images").exists()
    assert leftovers(data) == []


def test_symlink_entry_refused(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        link = zipfile.ZipInfo("images/render/render0001.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(LunarError, match="symbolic link"):
        safe_extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "images").exists()


def test_unpacked_size_checked_against_free_space(tmp_path, layout, monkeypatch):
    import shutil

    archive = zip_folder(layout, tmp_path / "lunar.zip")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9 - 10, 10))
    with pytest.raises(LunarError, match="not enough disk space"):
        safe_extract_zip(archive, tmp_path / "out")


@pytest.mark.parametrize(("drop", "named"), [("images/render", "images/render"), ("images/clean", "images/clean")])
def test_missing_part_is_named(tmp_path, drop, named):
    import shutil

    root = make_layout(tmp_path / "src", ground=False)
    shutil.rmtree(root / drop)
    data = tmp_path / "data"
    with pytest.raises(LunarError, match=named):
        fetch_dataset(str(zip_folder(root, tmp_path / "x.zip")), data)
    assert not (data / "dataset.json").exists()
    assert leftovers(data) == []


def test_mismatched_counts_and_missing_real_photos_only_warn(tmp_path, capsys):
    root = make_layout(tmp_path / "src", renders=3, clean=2, real=0, ground=False)
    counts = validate_layout(root)
    assert counts == {"render": 3, "clean": 2, "ground": 0, "real_images": 0, "real_masks": 0}
    err = capsys.readouterr().err
    assert "3 renders but 2 images/clean masks" in err
    assert "no real_moon_images" in err


def test_existing_dataset_needs_force_and_replacing_keeps_other_files(tmp_path, layout):
    data = tmp_path / "data"
    fetch_dataset(str(layout), data)
    (data / "manifest.csv").write_text("path,split\n")
    (data / "cache").mkdir()
    (data / "cache" / "keep.npy").write_bytes(b"1")
    (data / "notes.txt").write_text("mine")

    with pytest.raises(LunarError, match=r"dataset already in .*data/ \(5 images\): pass --force to replace it"):
        fetch_dataset(str(layout), data)

    small = zip_folder(make_layout(tmp_path / "small", renders=1, real=1), tmp_path / "small.zip")
    dataset = fetch_dataset(str(small), data, force=True)
    assert dataset["counts"]["render"] == 1
    assert sorted(p.name for p in (data / "images" / "render").iterdir()) == ["render0001.png"]
    assert not (data / "manifest.csv").exists()  # it listed the old files
    assert (data / "cache" / "keep.npy").exists() and (data / "notes.txt").read_text() == "mine"
    assert leftovers(data) == []


def test_leftover_images_without_marker_need_force(tmp_path, layout):
    data = tmp_path / "data"
    (data / "images" / "render").mkdir(parents=True)
    with pytest.raises(LunarError, match="interrupted fetch"):
        fetch_dataset(str(layout), data)
    assert fetch_dataset(str(layout), data, force=True)["counts"]["render"] == 3


def test_damaged_zip_midway_leaves_no_dataset_and_old_one_intact(tmp_path, layout):
    data = tmp_path / "data"
    old = fetch_dataset(str(layout), data)

    archive = tmp_path / "damaged.zip"
    zip_folder(layout, archive)
    raw = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:  # flip a byte inside a late member: its CRC check fails while unpacking
        member = zf.infolist()[-2]
    data_start = member.header_offset + 30 + len(member.filename.encode()) + len(member.extra)
    raw[data_start + 5] ^= 0xFF
    archive.write_bytes(bytes(raw))

    with pytest.raises(LunarError, match="unpacking failed"):
        fetch_dataset(str(archive), data, force=True)
    assert read_dataset_info(data) == old  # the failure happened before anything was replaced
    assert leftovers(data) == []


@pytest.mark.parametrize("error", [ConnectionResetError("connection reset by peer"), KeyboardInterrupt()])
def test_interrupted_download_leaves_nothing(tmp_path, error):
    data = tmp_path / "data"

    def half_download(url: str, dest: Path) -> Path:
        (dest / "lunar.zip").write_bytes(b"PK\x03\x04 half")
        raise error

    with pytest.raises((LunarError, KeyboardInterrupt)) as caught:
        fetch_dataset("https://example.invalid/lunar.zip", data, downloader=half_download)
    if isinstance(error, OSError):
        assert "could not download https://example.invalid/lunar.zip (connection reset by peer)" in str(caught.value)
    assert not (data / "dataset.json").exists()
    assert leftovers(data) == [] and list(data.iterdir()) == []


def test_http_and_drive_sources_go_through_the_downloader(tmp_path, layout):
    archive = zip_folder(layout, tmp_path / "lunar.zip", prefix="lunar/")
    calls = []

    def stand_in(url_or_id: str, dest: Path) -> Path:
        calls.append((url_or_id, dest.parent.parent))
        return Path(zip_folder(layout, dest / "got.zip")) if url_or_id.startswith("http") else archive

    data = tmp_path / "data"
    dataset = fetch_dataset("https://example.org/lunar.zip", data, downloader=stand_in)
    assert dataset["source"] == "https://example.org/lunar.zip" and dataset["counts"]["real_masks"] == 2
    fetch_dataset("drive:1AbCdEfGhIjKlMnOpQrStUvWxYz012345", data, downloader=stand_in, force=True)
    assert [c[0] for c in calls] == ["https://example.org/lunar.zip", "1AbCdEfGhIjKlMnOpQrStUvWxYz012345"]
    assert all(c[1] == data for c in calls)  # downloads are staged inside data_dir


def test_download_that_is_not_a_zip_is_refused(tmp_path):
    def html_page(url: str, dest: Path) -> Path:
        (dest / "lunar.zip").write_text("<html>sign in</html>")
        return dest / "lunar.zip"

    with pytest.raises(LunarError, match="not a zip archive"):
        fetch_dataset("https://example.org/lunar.zip", tmp_path / "data", downloader=html_page)
    assert leftovers(tmp_path / "data") == []


class StandInKaggle:
    """Records calls like the real KaggleApi and 'downloads' a zip made in tmp_path."""

    def __init__(self, archive: Path) -> None:
        self.archive = archive
        self.calls: list[tuple] = []

    def authenticate(self) -> None:
        self.calls.append(("authenticate",))

    def dataset_download_files(self, dataset, path=None, force=False, quiet=True, unzip=False, licenses=()):
        self.calls.append(("download", dataset, unzip, quiet))
        print(f"Dataset URL: https://www.kaggle.com/datasets/{dataset}")  # the real one prints this on stdout
        Path(path, dataset.split("/")[1] + ".zip").write_bytes(self.archive.read_bytes())


def test_kaggle_source_downloads_and_keeps_stdout_clean(tmp_path, layout, capsys):
    api = StandInKaggle(zip_folder(layout, tmp_path / "k.zip", prefix="dataset/"))
    data = tmp_path / "data"
    dataset = fetch_dataset("kaggle", data, api_factory=lambda: api)
    assert api.calls == [("authenticate",), ("download", KAGGLE_DATASET, False, False)]
    assert dataset["source"] == "kaggle" and dataset["kaggle_dataset"] == KAGGLE_DATASET
    assert dataset["counts"]["render"] == 3
    captured = capsys.readouterr()
    assert captured.out == "" and "Dataset URL" in captured.err
    assert leftovers(data) == []


def test_kaggle_without_credentials_is_one_line_with_what_to_do(tmp_path, capsys):
    class NoCredentials(StandInKaggle):
        def authenticate(self) -> None:  # what kaggle 2.x does: print help, then exit(1)
            print("Authentication required to call the Kaggle API.\n\nFirst, ...")
            raise SystemExit(1)

    with pytest.raises(LunarError) as caught:
        fetch_dataset("kaggle", tmp_path / "data", api_factory=lambda: NoCredentials(tmp_path / "none.zip"))
    message = str(caught.value)
    assert "\n" not in message
    assert "~/.kaggle/kaggle.json" in message and "KAGGLE_USERNAME and KAGGLE_KEY" in message
    assert "lunar fetch --source PATH" in message
    assert capsys.readouterr().out == ""
    assert leftovers(tmp_path / "data") == []


def test_kaggle_network_failure_is_one_line(tmp_path):
    class Offline(StandInKaggle):
        def dataset_download_files(self, *args, **kwargs):
            raise OSError("Failed to establish a new connection: [Errno -3] Temporary failure in name resolution")

    expected = r"cannot download .* from Kaggle \(Failed to establish.*check your connection"
    with pytest.raises(LunarError, match=expected):
        fetch_dataset("kaggle", tmp_path / "data", api_factory=lambda: Offline(tmp_path / "none.zip"))
    assert not (tmp_path / "data" / "dataset.json").exists()
    assert leftovers(tmp_path / "data") == []


def test_installed_kaggle_without_credentials(tmp_path):
    """The real KaggleApi (import-time auth, exit(1) on no credentials) becomes our one-line error."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update(HOME=str(tmp_path), KAGGLE_CONFIG_DIR=str(tmp_path / ".kaggle"), XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    script = (
        "import sys\nfrom pathlib import Path\nfrom lunar_cli.console import LunarError\n"
        "from lunar_cli.data.fetch import fetch_dataset\n"
        "try:\n    fetch_dataset('kaggle', Path(sys.argv[1]))\n"
        "except LunarError as e:\n    sys.stderr.write('LUNAR:' + str(e))\n    sys.exit(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "data")], env=env, capture_output=True,
                          text=True, timeout=60)
    if "cannot be imported" in done.stderr:
        pytest.skip("kaggle is not importable here")
    assert done.returncode == 3, done.stderr
    assert "LUNAR:no usable Kaggle credentials" in done.stderr
    assert done.stdout == ""  # kaggle's multi-line help page is swallowed


def test_read_dataset_info_without_dataset(tmp_path):
    with pytest.raises(LunarError, match=r"no dataset in .*/: run lunar fetch --source synthetic"):
        read_dataset_info(tmp_path / "data")


def test_unknown_source_is_explained(tmp_path):
    with pytest.raises(LunarError, match="no such file or folder; use synthetic, kaggle"):
        fetch_dataset(str(tmp_path / "nope.zip"), tmp_path / "data")


# --- checkpoints ---------------------------------------------------------------------


def stand_in_downloader(payloads: dict[str, tuple[str, bytes]], calls: list):
    def download(url_or_id: str, dest: Path) -> Path:
        calls.append(url_or_id)
        name, data = payloads[url_or_id]
        (dest / name).write_bytes(data)
        return dest / name

    return download


def test_fetch_models_with_matching_and_wrong_checksum(tmp_path):
    blob = b"checkpoint bytes"
    calls: list = []
    downloader = stand_in_downloader({"1AbCdEfGhIjKlMnOpQrStUvWxYz0": ("unet_custom.pt", blob)}, calls)
    models = tmp_path / "models"

    written = fetch_models("https://drive.google.com/file/d/1AbCdEfGhIjKlMnOpQrStUvWxYz0/view?usp=sharing", models,
                           checksum=hashlib.sha256(blob).hexdigest(), downloader=downloader)
    assert written == [models / "unet_custom.pt"] and written[0].read_bytes() == blob
    assert calls == ["1AbCdEfGhIjKlMnOpQrStUvWxYz0"]

    written[0].unlink()
    with pytest.raises(LunarError, match="has sha256 .* expected 0{64}.*nothing was kept"):
        fetch_models("drive:1AbCdEfGhIjKlMnOpQrStUvWxYz0", models, checksum="0" * 64, downloader=downloader)
    assert list(models.iterdir()) == []


def test_fetch_models_unpacks_a_zip_of_checkpoints(tmp_path):
    archive = tmp_path / "ckpt.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("trained/unet_custom.pt", b"a")
        zf.writestr("trained/resnet34/best.pt", b"b")
        zf.writestr("__MACOSX/trained/._unet_custom.pt", b"junk")
    downloader = stand_in_downloader({"https://example.org/ckpt.zip": ("ckpt.zip", archive.read_bytes())}, [])
    models = tmp_path / "models"
    written = fetch_models("https://example.org/ckpt.zip", models, downloader=downloader)
    assert sorted(p.relative_to(models).as_posix() for p in written) == ["resnet34/best.pt", "unet_custom.pt"]
    assert sorted(p.name for p in models.iterdir()) == ["resnet34", "unet_custom.pt"]


def test_fetch_models_rejects_what_it_cannot_download(tmp_path):
    with pytest.raises(LunarError, match="expected an http"):
        fetch_models("models.zip", tmp_path / "models")
    with pytest.raises(LunarError, match="64 hex digits"):
        fetch_models("https://example.org/a.pt", tmp_path / "models", checksum="abc")


@pytest.fixture
def http_server(tmp_path):
    """A real HTTP server on localhost serving tmp_path/www (no network involved)."""
    www = tmp_path / "www"
    www.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(www), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_fetch_models_over_real_http(tmp_path, http_server):
    www, base = http_server
    (www / "unet_custom.pt").write_bytes(b"weights" * 1000)
    models = tmp_path / "models"
    written = fetch_models(f"{base}/unet_custom.pt", models, checksum=hashlib.sha256(b"weights" * 1000).hexdigest())
    assert written == [models / "unet_custom.pt"] and written[0].read_bytes() == b"weights" * 1000
    assert [p.name for p in models.iterdir()] == ["unet_custom.pt"]

    with pytest.raises(LunarError, match=r"could not download .*/missing.pt \(HTTP Error 404"):
        fetch_models(f"{base}/missing.pt", models)


def test_fetch_dataset_over_real_http(tmp_path, layout, http_server):
    www, base = http_server
    zip_folder(layout, www / "lunar.zip")
    dataset = fetch_dataset(f"{base}/lunar.zip", tmp_path / "data")
    assert dataset["counts"]["render"] == 3 and dataset["source"] == f"{base}/lunar.zip"
