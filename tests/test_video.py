"""lunar predict on videos and numbered frames: frame count, order, time stamps, masks, overlay videos, bad videos."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from lunar_cli.classes import write_png_atomic
from tests.test_predict import REPO, photo, predict, save_model

FPS = 5.0


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A tiny untrained custom U-Net fed at scale 1: its masks follow every pixel of a frame."""
    return save_model(tmp_path_factory.mktemp("model") / "best.pt", square=None, base_width=4, depth=2)


def frames(n: int, seed: int = 0) -> list[np.ndarray]:
    """Return n different smooth RGB frames (48x64)."""
    rng = np.random.default_rng(seed)
    return [photo(rng, 48, 64) for _ in range(n)]


def write_video(path: Path, images: list[np.ndarray], codec: str = "FFV1", fps: float = FPS) -> Path:
    """Write RGB frames as a video with OpenCV (FFV1: lossless, so the frames decode exactly as written)."""
    writer = cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*codec), fps, images[0].shape[1::-1])
    assert writer.isOpened()
    for image in images:
        writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def read_video_frames(path: Path) -> tuple[list[np.ndarray], float]:
    """Return a video's frames (RGB) and its frame rate, as OpenCV reads them."""
    capture = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        out.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    return out, capture.get(cv2.CAP_PROP_FPS)


def mask(path: str) -> np.ndarray:
    return cv2.imread(path, cv2.IMREAD_UNCHANGED)


def test_a_video_gives_each_frame_the_mask_its_photo_gets_in_order_with_time_stamps(model, tmp_path):
    images = frames(7)
    video = write_video(tmp_path / "clip.avi", images)
    for i, image in enumerate(images):
        write_png_atomic(tmp_path / "photos" / f"shot{i}.png", image)
    from_video = predict([video], tmp_path / "out", model, fmt="index", batch_size=3)
    photos = predict(sorted((tmp_path / "photos").iterdir()), tmp_path / "ref", model, fmt="index")
    records = from_video["records"]
    assert [r["frame"] for r in records] == list(range(7)) and not from_video["failed"]
    assert [r["time_s"] for r in records] == pytest.approx([i / FPS for i in range(7)])
    assert [Path(r["output"][0]).name for r in records] == [f"clip_{i:06d}.png" for i in range(7)]
    assert all(r["input"] == str(video) and (r["width"], r["height"]) == (64, 48) for r in records)
    ours = [mask(r["output"][0]) for r in records]
    theirs = [mask(r["output"][0]) for r in sorted(photos["records"], key=lambda r: int(Path(r["input"]).stem[4:]))]
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs))
    assert len({m.tobytes() for m in ours}) == 7  # each frame its own mask: the order is checked, not a constant


def test_every_n_samples_frames_and_a_numbered_folder_is_a_sequence_in_number_order(model, tmp_path):
    images = frames(11, seed=1)
    video = write_video(tmp_path / "clip.avi", images)
    sampled = predict([video], tmp_path / "out", model, every=3)
    assert [r["frame"] for r in sampled["records"]] == [0, 3, 6, 9]
    folder = tmp_path / "frames"
    for i, image in enumerate(images):  # frame_10 sorts before frame_2 by name, after it by number
        write_png_atomic(folder / f"frame_{i}.png", image)
    numbered = predict([folder], tmp_path / "seq", model, every=2, fps=10.0)
    assert [Path(r["input"]).name for r in numbered["records"]] == [f"frame_{i}.png" for i in range(0, 11, 2)]
    assert [(r["frame"], r["time_s"]) for r in numbered["records"]] == [(i, pytest.approx(i / 10)) for i in range(0, 11, 2)]
    plain = predict([folder], tmp_path / "plain", model, every=5)  # no --fps: no time stamps are made up
    assert [(r["frame"], r["time_s"]) for r in plain["records"]] == [(0, None), (5, None), (10, None)]
    by_frame = {r["frame"]: r for r in numbered["records"]}
    for record in [r for r in sampled["records"] if r["frame"] in by_frame]:  # frames 0 and 6: the same mask
        assert np.array_equal(mask(record["output"][0]), mask(by_frame[record["frame"]]["output"][0]))


def test_overlay_and_mask_videos_hold_every_frame_and_nothing_is_left_beside_them(model, tmp_path):
    images = frames(6, seed=2)
    video = write_video(tmp_path / "clip.avi", images)
    pngs = predict([video], tmp_path / "pngs", model, fmt="overlay")
    (tmp_path / "out").mkdir()
    result = predict([video], tmp_path / "out" / "overlay.mkv", model, fmt="overlay", hazard=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["overlay.mkv", "overlay_hazard.mkv"]
    assert result["written"] == 2 and all(r["output"][0].endswith("overlay.mkv") for r in result["records"])
    shown, fps = read_video_frames(tmp_path / "out" / "overlay.mkv")
    assert fps == pytest.approx(FPS) and len(shown) == 6
    for frame, record in zip(shown, pngs["records"]):  # FFV1 is lossless: the PNG overlays exactly
        assert np.array_equal(frame, cv2.cvtColor(cv2.imread(record["output"][0]), cv2.COLOR_BGR2RGB))
    assert all("hazard" in r for r in result["records"])
    mp4 = predict([video], tmp_path / "out.mp4", model, fmt="rgb", every=2)
    shown, fps = read_video_frames(tmp_path / "out.mp4")
    assert len(shown) == 3 and shown[0].shape == (48, 64, 3) and fps == pytest.approx(FPS / 2)
    assert len(mp4["records"]) == 3 and mp4["written"] == 1


def corrupt_frame(path: Path, frame: int) -> None:
    """Zero the JPEG data of one frame of a Motion-JPEG AVI (its chunks are tagged 00dc)."""
    data = bytearray(path.read_bytes())
    start = data.find(b"movi")
    for _ in range(frame + 1):
        start = data.find(b"00dc", start + 4)
    size = int.from_bytes(data[start + 4 : start + 8], "little")
    data[start + 8 : start + 8 + size] = bytes(size)
    path.write_bytes(bytes(data))


def test_a_corrupt_frame_is_skipped_with_one_line_and_the_rest_goes_on(model, tmp_path):
    video = write_video(tmp_path / "clip.avi", frames(10, seed=3), codec="MJPG")
    corrupt_frame(video, 4)
    # A process of its own: FFmpeg's own complaint about the frame would go straight to stderr.
    proc = subprocess.run([sys.executable, "-m", "lunar_cli", "predict", str(video), "-o", str(tmp_path / "out"),
                           "--model", str(model), "--json"], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    warnings = proc.stderr.splitlines()
    assert len(warnings) == 1 and "frame 4 cannot be decoded" in warnings[0], proc.stderr
    out = json.loads(proc.stdout)
    assert [r["frame"] for r in out["records"]] == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert out["failed"] == [{"input": str(video), "frame": 4, "reason": warnings[0][len("warning: "):]}]
    assert len(list((tmp_path / "out").iterdir())) == 9


def test_a_video_that_ends_early_says_where_and_keeps_the_frames_before(model, tmp_path, cli):
    video = write_video(tmp_path / "clip.avi", frames(10, seed=4), codec="MJPG")
    video.write_bytes(video.read_bytes()[: int(video.stat().st_size * 0.6)])
    result = cli("predict", video, "-o", tmp_path / "clip.mp4", "--format", "overlay", "--model", model, "--json")
    assert result.code == 1 and result.err.count("warning:") == 1, result.err
    done = [r["frame"] for r in result.json()["records"]]
    assert 3 <= len(done) < 10 and done == list(range(len(done)))
    assert f"ends at frame {len(done)} of the 10 its header gives" in result.err
    shown, _ = read_video_frames(tmp_path / "clip.mp4")
    assert len(shown) == len(done)


def test_bad_videos_and_video_outputs_are_one_line_errors(model, tmp_path, cli):
    video = write_video(tmp_path / "clip.avi", frames(3, seed=5))
    (tmp_path / "text.mp4").write_text("not a video")
    write_png_atomic(tmp_path / "one.png", frames(1)[0])
    cases = [
        ([tmp_path / "text.mp4", "-o", tmp_path / "o"], "text.mp4: not a readable video"),
        ([video, "-o", tmp_path / "m.png"], "is a video, one mask per frame"),
        ([video, tmp_path / "one.png", "-o", tmp_path / "o.mp4"], "one video is written from one video"),
        ([video, "-o", tmp_path / "o.mp4", "--format", "index"], "a video shows --format rgb or overlay"),
        ([video, "-o", tmp_path / "no" / "o.mp4"], "no such folder"),
        ([video, "-o", tmp_path / "o.mp4", "--every", "0"], "'predict.every': must be 1 to 1000000"),
    ]
    for args, message in cases:
        result = cli("predict", *args, "--model", model)
        assert result.code == 1 and result.err.count("\n") == 1 and message in result.err, (args, result.err)
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.mp4").exists()
    mixed = cli("predict", tmp_path / "text.mp4", tmp_path / "one.png", "-o", tmp_path / "o", "--model", model, "--json")
    assert mixed.code == 1 and mixed.err.count("warning:") == 1 and len(json.loads(mixed.out)["records"]) == 1
