"""lunar predict as a user runs it: files, folders, globs, stdin, every format, tiling, hazard, failures, torchrun."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from lunar_cli.classes import PALETTE, decode_mask, read_image_rgb, write_png_atomic
from lunar_cli.console import LunarError
from lunar_cli.hazard import CIRCLE_RGB, HAZARD_RGB, SAFE_RGB, assess_hazard, hazard_and_safe, largest_safe_circle
from lunar_cli.predict import run_predict
from lunar_cli.predict_files import output_names

REPO = Path(__file__).resolve().parents[1]


def save_model(path: Path, square: int | None = 64, seed: int = 0, scale: float = 1.0, height: int | None = None,
               **model_kwargs) -> Path:
    """Write a tiny untrained custom U-Net as a lunar checkpoint (no training needed to test predict).

    ``square``: photos are squashed to that square (the study's way); None: fed at ``scale``, or at ``height``.
    """
    import torch

    from lunar_cli.frames import FrameSize
    from lunar_cli.models.checkpoint import checkpoint_meta, save_checkpoint
    from lunar_cli.models.registry import build_model

    torch.manual_seed(seed)
    model = build_model("custom", **model_kwargs)
    meta = checkpoint_meta(
        "custom", frame_size=FrameSize(scale=scale, square=square, height=height), crop_size=square or 64,
        normalization={"mean": [0, 0, 0], "std": [1, 1, 1]}, epoch=1, best_metric=("val_miou", 0.5),
        model_kwargs=model_kwargs,
    )  # fmt: skip
    save_checkpoint(path, model_state=model.state_dict(), meta=meta)
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return save_model(tmp_path_factory.mktemp("model") / "best.pt")


def photo(rng: np.random.Generator, height: int = 48, width: int = 64) -> np.ndarray:
    """Return a smooth random RGB photo (blurred noise, full contrast), like terrain at a glance."""
    img = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 3)
    return cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX)


def make_photos(folder: Path, n: int, size=(48, 64), seed: int = 0, name: str = "shot") -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = [folder / f"{name}{i}.png" for i in range(n)]
    for p in paths:
        write_png_atomic(p, photo(rng, *size))
    return paths


def predict(inputs, output, model, **kw) -> dict:
    """Run lunar predict in-process; option keywords (fmt, tile, hazard, ...) go into its PredictConfig."""
    from dataclasses import fields

    from lunar_cli.config import PredictConfig

    names = {f.name for f in fields(PredictConfig)}
    options = PredictConfig(**{("format" if k == "fmt" else k): kw.pop(k) for k in list(kw) if k in names | {"fmt"}})
    kw.setdefault("device", "cpu")
    kw.setdefault("progress", False)
    kw.setdefault("runs_dir", output.parent / "runs")
    return run_predict([str(i) for i in inputs], output=output, model=model, options=options, **kw)


def test_one_file_writes_a_palette_mask_at_the_photo_size(model_file, tmp_path):
    (src,) = make_photos(tmp_path / "in", 1, size=(80, 100))
    out = tmp_path / "mask.png"
    result = predict([src], out, model_file)
    assert result["failed"] == [] and result["written"] == 1 and result["model"] == str(model_file)
    (record,) = result["records"]
    assert record["input"] == str(src) and record["output"] == [str(out)]
    assert (record["width"], record["height"]) == (100, 80)
    mask = read_image_rgb(out)
    assert mask.shape == (80, 100, 3)
    colours = {tuple(c) for c in mask.reshape(-1, 3)}
    assert colours <= {tuple(c) for c in PALETTE.tolist()}
    fractions = record["class_fractions"]
    assert list(fractions) == ["ground", "sky", "small_rocks", "large_rocks"]
    indices, _ = decode_mask(mask)
    assert fractions == {n: pytest.approx(float((indices == i).mean()), abs=1e-6) for i, n in enumerate(fractions)}
    assert record["seconds"] > 0


def test_folder_glob_and_stdin_give_one_mask_per_photo(model_file, tmp_path, monkeypatch):
    photos = make_photos(tmp_path / "shots", 3)
    (tmp_path / "shots" / "notes.txt").write_text("not a photo")  # folders skip non-images

    by_folder = predict([tmp_path / "shots"], tmp_path / "a", model_file)
    assert [r["input"] for r in by_folder["records"]] == [str(p) for p in photos]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["shot0.png", "shot1.png", "shot2.png"]

    by_glob = predict([tmp_path / "shots" / "shot[12].png"], tmp_path / "b", model_file)
    assert [r["input"] for r in by_glob["records"]] == [str(p) for p in photos[1:]]

    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{photos[2]}\n\n{photos[0]}\n"))  # as from `find -name '*.png'`
    by_stdin = predict(["-"], tmp_path / "c", model_file)
    assert [r["input"] for r in by_stdin["records"]] == [str(photos[2]), str(photos[0])]
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["shot0.png", "shot2.png"]
    # The same photo through every route gives the same mask.
    assert np.array_equal(read_image_rgb(tmp_path / "a" / "shot2.png"), read_image_rgb(tmp_path / "c" / "shot2.png"))


def test_every_format_describes_the_same_prediction(model_file, tmp_path):
    photos = make_photos(tmp_path / "in", 2) + make_photos(tmp_path / "in", 1, size=(100, 80), name="tall")
    outs = {fmt: predict(photos, tmp_path / fmt, model_file, fmt=fmt, batch_size=2)
            for fmt in ("rgb", "index", "overlay", "probs")}  # fmt: skip
    for path in photos:
        h, w = read_image_rgb(path).shape[:2]
        rgb_indices, off = decode_mask(read_image_rgb(tmp_path / "rgb" / f"{path.stem}.png"))
        assert off == 0.0 and rgb_indices.shape == (h, w)

        index = cv2.imread(str(tmp_path / "index" / f"{path.stem}.png"), cv2.IMREAD_UNCHANGED)
        assert index.shape == (h, w) and index.dtype == np.uint8 and index.max() <= 3
        assert np.array_equal(index, rgb_indices)

        over = read_image_rgb(tmp_path / "overlay" / f"{path.stem}_overlay.png")
        assert over.shape == (h, w, 3)
        ground = index == 0
        assert np.array_equal(over[ground], read_image_rgb(path)[ground])  # ground is left as the photo
        assert not np.array_equal(over[~ground], read_image_rgb(path)[~ground])

        with np.load(tmp_path / "probs" / f"{path.stem}.npz") as npz:
            probs, classes = npz["probs"], list(npz["classes"])
        assert probs.dtype == np.float16 and probs.shape == (4, h, w)
        assert classes == ["ground", "sky", "small_rocks", "large_rocks"]
        assert np.allclose(probs.astype(np.float32).sum(axis=0), 1.0, atol=5e-3)
        agree = (probs.argmax(axis=0) == index).mean()
        assert agree > 0.99  # float16 rounding may flip exact ties only
    assert [r["output"][0].endswith("_overlay.png") for r in outs["overlay"]["records"]] == [True] * 3


def test_tiling_an_image_of_the_model_size_equals_the_untiled_prediction(model_file, tmp_path):
    (src,) = make_photos(tmp_path / "in", 1, size=(64, 64))
    predict([src], tmp_path / "plain.png", model_file, fmt="index")
    predict([src], tmp_path / "tiled.png", model_file, fmt="index", tile=True)
    plain = cv2.imread(str(tmp_path / "plain.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(plain, cv2.imread(str(tmp_path / "tiled.png"), cv2.IMREAD_UNCHANGED))


def test_tiled_prediction_matches_whole_image_prediction_at_native_resolution(tmp_path):
    # The same weights twice: one checkpoint sees 64x64 windows, the other the whole 100x80
    # photo at once. A shallow U-Net (depth 1) looks at a small neighbourhood, so windows
    # blended without seams must agree with the whole-image pass almost everywhere.
    windowed = save_model(tmp_path / "win.pt", square=64, seed=1, depth=1)
    native = save_model(tmp_path / "native.pt", square=None, seed=1, depth=1)
    (src,) = make_photos(tmp_path / "in", 1, size=(80, 100), seed=1)

    def mask(model, name, **kw):
        predict([src], tmp_path / name, model, fmt="index", **kw)
        return cv2.imread(str(tmp_path / name), cv2.IMREAD_UNCHANGED)

    truth = mask(native, "native.png")
    assert np.bincount(truth.ravel(), minlength=4).max() < 0.9 * truth.size  # not one class everywhere
    tiled = mask(windowed, "tiled.png", tile=True, tile_overlap=0.25)
    resized = mask(windowed, "resized.png")  # whole photo squeezed to 64x64: what tiling avoids
    assert (tiled == truth).mean() >= 0.99
    assert (resized == truth).mean() < 0.95  # so the check above can tell the two apart

    small = make_photos(tmp_path / "small", 1, size=(30, 41))[0]  # smaller than a window: mirror-padded
    record = predict([small], tmp_path / "small.png", windowed, tile=True)["records"][0]
    assert read_image_rgb(tmp_path / "small.png").shape == (30, 41, 3)
    assert sum(record["class_fractions"].values()) == pytest.approx(1.0, abs=1e-5)


def test_hazard_grows_rocks_by_the_margin_and_finds_the_far_safe_corner():
    mask = np.zeros((100, 100), np.uint8)  # all ground
    mask[8:12, 8:12] = 2  # a small rock near the top-left corner
    hazard, safe = hazard_and_safe(mask, margin=15)
    assert hazard[10, 26] and not hazard[10, 27]  # 15 px right of the rock's edge (x=11), not 16
    assert hazard[26, 10] and not hazard[27, 10]
    assert not hazard[25, 25]  # the corner of a square grown by 15 px is outside the rounded margin
    assert np.array_equal(safe, ~hazard)
    summary, _, _ = assess_hazard(mask, 15)
    assert summary["hazard_fraction"] == pytest.approx(hazard.mean(), abs=1e-6)
    assert summary["safe_fraction"] == pytest.approx(1 - hazard.mean(), abs=1e-6)
    region = summary["largest_safe_region"]
    x, y = region["center_xy"]
    assert x > 50 and y > 50 and abs(x - y) <= 1  # pushed toward the far (bottom-right) corner
    ys, xs = np.nonzero(hazard)
    nearest_hazard = np.sqrt((xs - x) ** 2 + (ys - y) ** 2).min()
    nearest_edge = min(x + 1, y + 1, 100 - x, 100 - y)  # the first pixel outside the frame
    assert region["radius_px"] == pytest.approx(min(nearest_hazard, nearest_edge), abs=0.01)
    assert region["radius_px"] > 40

    mask = np.full((60, 80), 1, np.uint8)  # sky, with a 21x21 ground square centred at (x=50, y=30)
    mask[20:41, 40:61] = 0
    mask[0, 0] = 3  # a rock far away changes nothing
    circle = largest_safe_circle(hazard_and_safe(mask, margin=5)[1])
    assert circle["center_xy"] == [50, 30] and circle["radius_px"] == 11.0
    assert circle["bbox"] == [40, 20, 60, 40]
    assert circle["area_px"] == sum(1 for dy in range(-11, 12) for dx in range(-11, 12) if dx * dx + dy * dy < 121)

    summary, _, _ = assess_hazard(np.full((10, 10), 3, np.uint8), 2)
    assert summary == {"margin_px": 2, "hazard_fraction": 1.0, "safe_fraction": 0.0, "largest_safe_region": None}


def test_hazard_option_writes_a_map_and_adds_it_to_the_record(model_file, tmp_path):
    (src,) = make_photos(tmp_path / "in", 1)
    record = predict([src], tmp_path / "out", model_file, hazard=True, hazard_margin=3)["records"][0]
    assert record["output"] == [str(tmp_path / "out" / "shot0.png"), str(tmp_path / "out" / "shot0_hazard.png")]
    indices, _ = decode_mask(read_image_rgb(tmp_path / "out" / "shot0.png"))
    summary, hazard, safe = assess_hazard(indices, 3)
    assert record["hazard"] == summary
    picture = read_image_rgb(tmp_path / "out" / "shot0_hazard.png")
    allowed = {(0, 0, 0), HAZARD_RGB, SAFE_RGB, CIRCLE_RGB}
    assert {tuple(c) for c in picture.reshape(-1, 3)} <= allowed
    assert (picture[hazard] == HAZARD_RGB).all(axis=1).mean() > 0.95  # all but the circle outline


def test_bad_files_are_skipped_and_listed_and_strict_stops(model_file, tmp_path, capsys):
    good = make_photos(tmp_path / "in", 2)
    (tmp_path / "in" / "fake.png").write_text("this is text, not a PNG")
    (tmp_path / "in" / "empty.jpg").write_bytes(b"")
    (tmp_path / "anim.gif").write_bytes(b"GIF89a")
    args = [tmp_path / "in", tmp_path / "anim.gif", tmp_path / "missing.png"]
    result = predict(args, tmp_path / "out", model_file)
    assert [r["input"] for r in result["records"]] == [str(p) for p in good]
    reasons = {Path(f["input"]).name: f["reason"] for f in result["failed"]}
    assert set(reasons) == {"fake.png", "empty.jpg", "anim.gif", "missing.png"}
    assert "not a PNG, JPEG, TIFF or BMP image" in reasons["fake.png"] and "empty" in reasons["empty.jpg"]
    assert "unsupported format .gif" in reasons["anim.gif"] and "no such file" in reasons["missing.png"]
    err = capsys.readouterr().err
    assert all(len(r.splitlines()) == 1 and r.split(":")[0] in err for r in reasons.values())

    # --strict: stops at the first bad file (empty.jpg sorts first), keeping what came before it.
    order = [tmp_path / "in" / "shot0.png", tmp_path / "in" / "empty.jpg", tmp_path / "in" / "shot1.png"]
    with pytest.raises(LunarError, match="empty.jpg: file is empty.*--strict"):
        predict(order, tmp_path / "strict", model_file, strict=True)
    assert sorted(p.name for p in (tmp_path / "strict").iterdir()) == ["shot0.png"]


def test_odd_photos_are_converted_with_one_warning_each(model_file, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    gray = (np.arange(48 * 64).reshape(48, 64) % 256).astype(np.uint8)
    cv2.imwrite(str(folder / "a_gray.png"), gray)
    cv2.imwrite(str(folder / "b_gray.png"), gray)
    cv2.imwrite(str(folder / "c_deep.png"), np.stack([gray.astype(np.uint16) * 257] * 3, axis=2))
    cv2.imwrite(str(folder / "d_rgba.png"), np.dstack([np.stack([gray] * 3, axis=2), np.full_like(gray, 128)]))
    result = predict([folder], tmp_path / "out", model_file)
    assert len(result["records"]) == 4 and result["failed"] == []
    err = capsys.readouterr().err
    assert err.count("grayscale") == 1 and "16-bit" in err and "RGBA" in err
    # The 16-bit copy of the same picture predicts like the 8-bit one.
    same = read_image_rgb(tmp_path / "out" / "a_gray.png")
    assert np.array_equal(same, read_image_rgb(tmp_path / "out" / "c_deep.png"))


def test_output_and_model_mistakes_are_one_line_errors(model_file, tmp_path):
    (src,) = make_photos(tmp_path / "in", 1)
    (tmp_path / "taken.png").mkdir()
    with pytest.raises(LunarError, match="taken.png: is a folder"):
        predict([src], tmp_path / "taken.png", model_file)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(LunarError, match="afile: exists and is a file"):
        predict([src], tmp_path / "afile", model_file)
    with pytest.raises(LunarError, match="would overwrite an input photo"):
        predict([tmp_path / "in"], tmp_path / "in", model_file)
    more = make_photos(tmp_path / "more", 2)
    with pytest.raises(LunarError, match="2 inputs; give a folder"):
        predict(more, tmp_path / "one.png", model_file)
    with pytest.raises(LunarError, match="format probs is written as .npz"):
        predict([src], tmp_path / "probs.png", model_file, fmt="probs")
    with pytest.raises(LunarError, match="no such file or folder"):
        predict([tmp_path / "nope.png"], tmp_path / "out", model_file)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LunarError, match="no images found"):
        predict([tmp_path / "empty"], tmp_path / "out", model_file)
    (tmp_path / "model.pt").write_text("not a checkpoint")
    with pytest.raises(LunarError, match="not a lunar checkpoint") as caught:
        predict([src], tmp_path / "out", tmp_path / "model.pt")
    assert "\n" not in str(caught.value)
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(LunarError, match="not writable"):
            predict([src], locked, model_file)


def test_default_model_is_the_newest_best_pt_under_runs(tmp_path, capsys):
    runs = tmp_path / "runs"
    old = save_model(runs / "train" / "custom" / "best.pt", seed=0)
    new = save_model(runs / "train" / "custom2" / "best.pt", seed=1)
    os.utime(old, (time.time() - 100, time.time() - 100))
    (src,) = make_photos(tmp_path / "in", 1)
    result = predict([src], tmp_path / "out", None, runs_dir=runs)
    assert result["model"] == str(new)
    assert f"using model {new} (newest under {runs / 'train'}/)" in capsys.readouterr().err.replace("\n", "")
    # With no run at all, the built-in model: tests/test_builtin.py.


def test_photos_sharing_a_name_get_distinct_outputs(model_file, tmp_path):
    a = make_photos(tmp_path / "day1", 1)[0]
    b = make_photos(tmp_path / "day2", 1, seed=5)[0]
    result = predict([a, b], tmp_path / "out", model_file, hazard=True)
    assert [Path(r["output"][0]).name for r in result["records"]] == ["day1_shot0.png", "day2_shot0.png"]
    assert output_names([Path("x/a.png"), Path("x/a_hazard.png")], [".png", "_hazard.png"]) == ["a", "a_hazard_2"]
    assert output_names([Path("x/A.png"), Path("y/a.tif")], [".png"]) == ["x_A", "y_a"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_share_the_inputs_and_rank0_returns_all_records(model_file, tmp_path):
    photos = make_photos(tmp_path / "in", 5)
    script = tmp_path / "job.py"
    script.write_text(
        "import json, os, sys\n"
        "from pathlib import Path\n"
        "from lunar_cli.config import PredictConfig\n"
        "from lunar_cli.predict import run_predict\n"
        f"r = run_predict([{str(tmp_path / 'in')!r}], output=Path({str(tmp_path / 'out')!r}), "
        f"model=Path({str(model_file)!r}), runs_dir=Path('runs'), device='cpu', progress=False, "
        "options=PredictConfig(batch_size=2))\n"
        f"Path({str(tmp_path)!r}, 'rank' + os.environ['RANK'] + '.json').write_text(json.dumps(r))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(free_port()), str(script)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert [r["input"] for r in rank0["records"]] == [str(p) for p in photos]  # each once, in input order
    assert [r["input"] for r in rank1["records"]] == [str(p) for p in photos[1::2]]
    assert rank0["written"] == 5 and rank0["failed"] == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [p.name for p in photos]
