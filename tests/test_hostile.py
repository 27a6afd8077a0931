"""What a hostile but realistic user tried, and broke: each case ends in one line, and no source file changes.

The cases of the reliability issue, numbered as it numbers them: commands that would write
over what they read (1), a small PNG claiming a huge frame (2), training that stops being
finite (3), one bad name in a batch (4), unbounded options and odd models (5), messages
that broke the one-line promise (6) and quiet surprises in manifests and folders (7).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import pytest

from lunar_cli.data.split import make_split
from tests.conftest import make_dataset
from tests.test_predict import REPO, make_photos, save_model


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def one_error_line(result) -> str:
    """Return the error line of a refused command: exactly one, the last thing it said, and no traceback or noise."""
    lines = [line for line in result.err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert result.code != 0, result.err
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in result.err, result.err
    return errors[0]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(path: Path, width: int, height: int) -> Path:
    """Write a PNG of a few dozen bytes whose header claims a ``width`` x ``height`` grayscale frame."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", zlib.compress(b"\0")) + png_chunk(b"IEND", b""))
    return path


def zero_png(path: Path, width: int, height: int) -> Path:
    """Write a real, valid all-black grayscale PNG of any size, streaming (20000x20000 is 0.4 MB on disk)."""
    packer, row, pending = zlib.compressobj(9), bytes(width + 1), bytearray()
    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)))
        for _ in range(height):
            pending += packer.compress(row)
            if len(pending) > 1 << 16:
                fh.write(png_chunk(b"IDAT", bytes(pending)))
                pending.clear()
        fh.write(png_chunk(b"IDAT", bytes(pending + packer.flush())) + png_chunk(b"IEND", b""))
    return path


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A run folder as training leaves it: best.pt, last.pt and history."""
    run = tmp_path / "runs" / "train" / "custom"
    save_model(run / "best.pt")
    shutil.copy(run / "best.pt", run / "last.pt")
    (run / "history.csv").write_text("epoch,train_loss\n1,0.5\n")
    return run


@pytest.fixture(scope="module")
def split_data(tmp_path_factory) -> Path:
    root = make_dataset(tmp_path_factory.mktemp("hostile") / "data", n_render=12, n_real=2, size=(64, 64))
    make_split(root)
    return root


# 1. Writing over what a command reads.


def test_export_refuses_to_write_over_the_run_it_reads(run_dir, cli):
    before = {p.name: digest(p) for p in run_dir.iterdir()}
    for target in ("best.pt", "last.pt", "history.csv"):
        line = one_error_line(cli("export", run_dir, "-o", run_dir / target, "--format", "torchscript"))
        assert f"{target}: would overwrite a file of the model it exports" in line
    link = run_dir.parent / "alias.pt"
    os.link(run_dir / "best.pt", link)  # the same file under another name is the same file
    assert "would overwrite" in one_error_line(cli("export", run_dir, "-o", link))
    assert {p.name: digest(p) for p in run_dir.iterdir()} == before
    result = cli("export", run_dir, "-o", run_dir / "model.onnx", "--json")  # beside the run's files is fine
    assert result.code == 0 and result.json()["class_agreement"] == 1.0


def test_predict_compare_and_train_refuse_to_write_over_a_model_they_use(run_dir, split_data, tmp_path, cli):
    (shot,) = make_photos(tmp_path / "in", 1)
    photo = shot.rename(shot.with_name("curves.png"))  # its mask would be named like the run's own curves.png
    (run_dir / "curves.png").write_bytes(b"the run's own figure")
    before = {p.name: digest(p) for p in run_dir.iterdir()}
    line = one_error_line(cli("predict", photo, "-o", run_dir, "--model", run_dir))
    assert "curves.png: would overwrite a file of the model's run" in line
    line = one_error_line(cli("compare", run_dir, "-o", run_dir, "--data-dir", split_data, "--runs-dir", tmp_path / "runs"))
    assert "would overwrite a file of a compared run" in line
    line = one_error_line(cli("train", "--init", run_dir, "--name", "custom", "--exist-ok", "--epochs", "1",
                              "--data-dir", split_data, "--runs-dir", tmp_path / "runs", "--image-size", "64"))  # fmt: skip
    assert "would overwrite the --init model" in line
    assert {p.name: digest(p) for p in run_dir.iterdir() if p.name != ".lock"} == before


# 2. A small file claiming a huge frame.


def test_a_decompression_bomb_is_refused_from_its_header_and_the_batch_goes_on(tmp_path, cli):
    folder = tmp_path / "in"
    (good,) = make_photos(folder, 1)
    png_claiming(folder / "bomb.png", 20000, 20000)
    model = save_model(tmp_path / "model.pt")
    result = cli("predict", folder, "-o", tmp_path / "out", "--model", model, "--json")
    assert result.code == 1
    records = result.json()  # valid JSON on stdout, whatever failed
    assert [r["input"] for r in records["records"]] == [str(good)] and (tmp_path / "out" / "shot0.png").is_file()
    (warning,) = [line for line in result.err.splitlines() if line.startswith("warning:")]
    assert "bomb.png: 20000x20000 pixels (400.0 megapixels)" in warning and "--tile" in warning
    # With --tile the budget is larger, but 400 megapixels is still too much: refused, not decoded.
    result = cli("predict", folder / "bomb.png", "-o", tmp_path / "tiled", "--model", model, "--tile")
    (line,) = result.err.splitlines()
    assert result.code == 1 and "over the 100 megapixels" in line and "downscale it" in line


def test_a_real_20000x20000_png_never_costs_its_size_in_memory(tmp_path):
    folder = tmp_path / "in"
    (good,) = make_photos(folder, 1)
    zero_png(folder / "zeros.png", 20000, 20000)
    assert (folder / "zeros.png").stat().st_size < 2_000_000  # 1.2 GB of pixels once decoded

    def limit_memory() -> None:  # 5 GB of address space: lunar needs about 4 for itself, the frame 30+
        resource.setrlimit(resource.RLIMIT_AS, (5 << 30, 5 << 30))

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "lunar_cli", "predict", str(folder), "-o", str(tmp_path / "out"),
                           "--model", str(save_model(tmp_path / "m.pt")), "--json"],
                          capture_output=True, text=True, env=env, preexec_fn=limit_memory, timeout=300)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert [r["input"] for r in json.loads(proc.stdout)["records"]] == [str(good)]
    assert "zeros.png: 20000x20000 pixels" in proc.stderr and "Traceback" not in proc.stderr


def test_huge_synthetic_frames_and_bombs_in_a_dataset_are_refused(tmp_path, cli):
    line = one_error_line(cli("fetch", "--width", "60000", "--height", "60000", "--data-dir", tmp_path / "d"))
    assert "fetch.width" in line and not (tmp_path / "d").exists()
    line = one_error_line(cli("fetch", "--width", "8000", "--height", "8000", "--data-dir", tmp_path / "d"))
    assert "over the 16 megapixels" in line and not (tmp_path / "d").exists()
    root = make_dataset(tmp_path / "data", n_render=6, n_real=1)
    png_claiming(root / "images/render/render0003.png", 30000, 30000)
    png_claiming(root / "images/clean/clean0003.png", 30000, 30000)
    result = cli("split", "--data-dir", root, "--json")
    assert result.code == 0 and any("render0003.png: 30000x30000 pixels" in s for s in result.json()["skipped"])
    result = cli("eda", "--data-dir", root, "--out", tmp_path / "eda", "--json")
    assert result.code == 0, result.err
    assert "render0003.png" in result.err and "Traceback" not in result.err


# 3. Training that stops being finite.


def test_training_that_diverges_stops_in_one_line_and_saves_nothing_non_finite(split_data, tmp_path, cli):
    import torch

    from lunar_cli.models.checkpoint import load_checkpoint

    # Weights that are finite but far out of range (1e30): the first forward pass overflows, as a learning rate far
    # too high does after a few steps (--lr is bounded now, so 1e30 is refused before training starts).
    start = save_model(tmp_path / "start.pt", base_width=16, depth=4)
    ckpt = torch.load(start, weights_only=True)
    ckpt["model"] = {k: v * 1e30 if v.dim() == 4 else v for k, v in ckpt["model"].items()}
    torch.save(ckpt, start)
    runs = tmp_path / "runs"
    result = cli("train", "--init", start, "--epochs", "3", "--image-size", "64", "--batch-size", "4",
                 "--data-dir", split_data, "--runs-dir", runs, "--device", "cpu", "--json")  # fmt: skip
    line = one_error_line(result)
    assert "training diverged in epoch 1" in line and "learning rate" in line and "--init weights" in line, line
    run = runs / "train" / "custom"
    assert not (run / "best.pt").exists()  # never a non-finite best.pt
    last = load_checkpoint(run / "last.pt")  # the last good state: before the first epoch
    assert last["meta"]["epoch"] == 0
    # predict does not pick that run: it has no best.pt, and its epoch-0 last.pt is refused when named.
    (photo,) = make_photos(tmp_path / "in", 1)
    assert "built-in model" in cli("predict", photo, "-o", tmp_path / "o.png", "--runs-dir", runs).err
    assert "epoch 0" in one_error_line(cli("evaluate", run, "--data-dir", split_data))
    assert "epoch 0" in one_error_line(cli("export", run, "-o", tmp_path / "m.onnx"))


@pytest.mark.parametrize("text, key", [
    ("train:\n  lr: 1.0e30\n", "train.lr"), ("train:\n  class_weights: [.nan, 1, 1, 1]\n", "train.class_weights"),
    ("train:\n  class_weights: [0, 0, 0, 0]\n", "train.class_weights"), ("seed: 100000000000000000000000\n", "seed"),
    ("seed: 1e23\n", "seed"), ("train:\n  lr: " + "[" * 20000 + "]" * 20000 + "\n", "nested too deeply"),
])  # fmt: skip
def test_non_finite_or_huge_config_values_are_one_line_key_errors(text, key, split_data, tmp_path, cli):
    (tmp_path / "bad.yaml").write_text(text)
    line = one_error_line(cli("train", "--config", tmp_path / "bad.yaml", "--data-dir", split_data,
                              "--runs-dir", tmp_path / "runs"))  # fmt: skip
    assert key in line and not (tmp_path / "runs").exists(), line


def test_models_with_non_finite_numbers_are_refused_on_loading(split_data, tmp_path, cli):
    import torch

    good = save_model(tmp_path / "good.pt")
    (photo,) = make_photos(tmp_path / "in", 1)

    def edited(name: str, change) -> Path:
        ckpt = torch.load(good, weights_only=True)
        change(ckpt)
        torch.save(ckpt, tmp_path / name)
        return tmp_path / name

    cases = {
        edited("nan_weights.pt", lambda c: c["model"][next(iter(c["model"]))].fill_(float("nan"))): "NaN or infinity",
        edited("nan_temperature.pt", lambda c: c["meta"].update(calibration={"temperature": float("nan")})):
            "calibration temperature",
        edited("zero_std.pt", lambda c: c["meta"]["normalization"].update(std=[1.0, 0.0, 1.0])): "std above 0",
    }  # fmt: skip
    for model, message in cases.items():
        for command in (["predict", photo, "-o", tmp_path / "o.png", "--model", model],
                        ["evaluate", model, "--data-dir", split_data], ["export", model, "-o", tmp_path / "m.onnx"]):
            assert message in one_error_line(cli(*command)), (model, command)
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "m.onnx").exists()


def test_json_output_never_holds_nan_or_infinity(capsys):
    from lunar_cli.console import print_json

    print_json({"a": float("nan"), "b": [float("inf"), 1.5], "c": {"d": -float("inf")}})
    text = capsys.readouterr().out
    assert json.loads(text) == {"a": None, "b": [None, 1.5], "c": {"d": None}} and "NaN" not in text


# 4. One bad name in a batch.


def test_a_file_name_too_long_fails_alone_from_arguments_and_stdin(tmp_path, cli, monkeypatch):
    import io

    good = make_photos(tmp_path / "in", 2)
    model = save_model(tmp_path / "m.pt")
    long = tmp_path / ("x" * 300 + ".png")
    result = cli("predict", good[0], long, good[1], "-o", tmp_path / "out", "--model", model, "--json")
    assert result.code == 1 and len(result.json()["records"]) == 2
    assert [f["reason"] for f in result.json()["failed"]] == [f"{long}: file name too long"]
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{good[0]}\n{long}\n{good[1]}\n"))
    result = cli("predict", "-", "-o", tmp_path / "out2", "--model", model, "--json")
    assert result.code == 1 and len(result.json()["records"]) == 2 and "Errno" not in result.err


# 5. Unbounded options and odd models.


def test_numeric_options_have_bounds_stated_in_help(tmp_path, cli):
    (photo,) = make_photos(tmp_path / "in", 1)
    model = save_model(tmp_path / "m.pt")
    line = one_error_line(cli("predict", photo, "-o", tmp_path / "o.png", "--model", model, "--hazard",
                              "--hazard-margin", "3000000000"))  # fmt: skip
    assert "predict.hazard_margin" in line and "0 to 10000" in line and not (tmp_path / "o.png").exists()
    assert "0 to 10000" in cli("predict", "--help").out
    line = one_error_line(cli("train", "--epochs", "-1"))
    assert "train.epochs" in line and "batch_size" not in line
    # A margin far larger than the photo is answered at once (a distance transform, whatever the margin).
    result = cli("predict", photo, "-o", tmp_path / "o.png", "--model", model, "--hazard", "--hazard-margin", "5000",
                 "--json")  # fmt: skip
    assert result.code == 0 and result.json()["records"][0]["hazard"]["margin_px"] == 5000


def test_onnx_models_that_take_other_inputs_are_one_line_errors(tmp_path, cli):
    import onnx
    from onnx import TensorProto, helper

    from lunar_cli.onnx_model import FORMAT

    (photo,) = make_photos(tmp_path / "in", 1)
    meta = {"format": FORMAT, "classes": [{"name": n} for n in "abcd"], "frame_size": {"scale": 1.0, "square": None},
            "pad_multiple": 32, "normalization_in_graph": {"mean": [0, 0, 0], "std": [1, 1, 1]}}  # fmt: skip

    def model(name: str, kind, shape) -> Path:
        graph = helper.make_graph([helper.make_node("Identity", ["images"], ["logits"])], "g",
                                  [helper.make_tensor_value_info("images", kind, shape)],
                                  [helper.make_tensor_value_info("logits", kind, shape)])  # fmt: skip
        proto = helper.make_model(graph)
        entry = proto.metadata_props.add()
        entry.key, entry.value = "lunar", json.dumps(meta)
        onnx.save(proto, tmp_path / name)
        return tmp_path / name

    nchw = model("nchw.onnx", TensorProto.FLOAT, ["N", 3, "H", "W"])
    fixed = model("fixed.onnx", TensorProto.UINT8, ["N", 64, 64, 3])
    assert "not uint8 RGB frames (N, H, W, 3)" in one_error_line(cli("predict", photo, "-o", tmp_path / "o.png",
                                                                      "--model", nchw))  # fmt: skip
    assert "fixed 64x64" in one_error_line(cli("predict", photo, "-o", tmp_path / "o.png", "--model", fixed))


# 6. Messages that broke the one-line promise or misled.


def test_damaged_pngs_and_fifos_get_one_line_each_and_no_libpng_noise(tmp_path):
    folder = tmp_path / "in"
    good = make_photos(folder, 2)
    data = bytearray(good[0].read_bytes())
    (folder / "cut.png").write_bytes(bytes(data[: len(data) // 2]))
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle: a checksum error
    (folder / "flipped.png").write_bytes(bytes(data))
    os.mkfifo(folder / "pipe.png")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "lunar_cli", "predict", str(folder), "-o", str(tmp_path / "out"),
                           "--model", str(save_model(tmp_path / "m.pt"))], capture_output=True, text=True, env=env,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert not [line for line in lines if "libpng" in line.lower()], proc.stderr
    assert any("cut.png: truncated PNG" in line for line in lines)
    assert any("flipped.png: damaged PNG (checksum error" in line for line in lines)
    assert any("pipe.png: not a regular file (a FIFO)" in line for line in lines)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["shot0.png", "shot1.png"]


def test_a_torchscript_export_and_a_model_for_other_classes_are_named_for_what_they_are(tmp_path, cli):
    import torch

    model = save_model(tmp_path / "m.pt")
    (photo,) = make_photos(tmp_path / "in", 1)
    assert cli("export", model, "-o", tmp_path / "m.ts", "--format", "torchscript").code == 0
    line = one_error_line(cli("predict", photo, "-o", tmp_path / "o.png", "--model", tmp_path / "m.ts"))
    assert "a TorchScript export" in line and "ONNX exports" in line
    ckpt = torch.load(model, weights_only=True)
    head = [k for k in ckpt["model"] if ckpt["model"][k].shape[:1] == (4,)][-2:]  # the final layer's weight and bias
    for key in head:
        ckpt["model"][key] = ckpt["model"][key][:3].clone()
    torch.save(ckpt, tmp_path / "three.pt")
    line = one_error_line(cli("predict", photo, "-o", tmp_path / "o.png", "--model", tmp_path / "three.pt"))
    assert "2 wrong-shape keys" in line and "other classes" in line


def test_an_unwritable_cache_names_the_option_that_moves_it(tmp_path, cli):
    root = make_dataset(tmp_path / "data", n_render=8, n_real=1, size=(64, 64))
    make_split(root)
    (root / "cache").write_text("a file where the cache folder would go")  # unwritable, even for root
    args = ["--epochs", "1", "--image-size", "64", "--batch-size", "4", "--data-dir", root, "--runs-dir", tmp_path / "r"]
    assert "--cache-dir" in one_error_line(cli("train", *args))
    result = cli("train", *args, "--cache-dir", tmp_path / "elsewhere", "--json")
    assert result.code == 0 and any((tmp_path / "elsewhere").iterdir())


def test_comparing_thirty_runs_draws_without_a_warning(tmp_path):
    from lunar_cli.plots import plot_compare_curves

    history = [{"epoch": e, "val_loss": 1 / e, "train_loss": 1 / e, "val_miou": 0.1 * e} for e in range(1, 4)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_compare_curves(tmp_path / "c.png", {f"run{i}": history for i in range(30)}, "30 runs")
    assert (tmp_path / "c.png").stat().st_size > 0


# 7. Quiet surprises.


@pytest.mark.parametrize("edit, message", [
    (lambda rows: rows + [["../outside.png", "images/clean/clean0001.png", "test"]], "outside the data folder"),
    (lambda rows: rows + [["/etc/passwd", "images/clean/clean0001.png", "test"]], "outside the data folder"),
    (lambda rows: rows + [[rows[1][0], rows[1][1], "test" if rows[1][2] != "test" else "train"]], "is listed in both"),
    (lambda rows: rows + [rows[-1]], "twice"),
])  # fmt: skip
def test_manifests_that_leave_the_data_folder_or_repeat_a_frame_are_refused(edit, message, tmp_path, cli):
    import csv

    root = make_dataset(tmp_path / "data", n_render=10, n_real=1, size=(64, 64))
    make_split(root)
    with open(root / "manifest.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    with open(root / "manifest.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(edit(rows))
    model = save_model(tmp_path / "m.pt")
    for command in (["train", "--epochs", "1", "--image-size", "64", "--runs-dir", tmp_path / "r"],
                    ["evaluate", model]):  # fmt: skip
        assert message in one_error_line(cli(*command, "--data-dir", root)), command


def test_a_symbolic_link_loop_in_an_input_folder_is_said(tmp_path, cli):
    folder = tmp_path / "in"
    make_photos(folder, 1)
    (folder / "loop.png").symlink_to(folder / "loop.png")
    result = cli("predict", folder, "-o", tmp_path / "out", "--model", save_model(tmp_path / "m.pt"), "--json")
    assert result.code == 1 and len(result.json()["records"]) == 1
    assert "loop.png: a symbolic link loop" in result.err


def test_a_run_with_only_last_pt_says_which_epoch_it_scores(split_data, tmp_path, cli):
    import torch

    run = tmp_path / "runs" / "train" / "stopped"
    save_model(run / "last.pt")  # epoch 1
    result = cli("evaluate", run, "--data-dir", split_data, "--split", "test", "--json")
    assert result.code == 0 and "no best.pt" in result.err and "from epoch 1" in result.err
    ckpt = torch.load(run / "last.pt", weights_only=True)
    ckpt["meta"]["epoch"] = 0
    torch.save(ckpt, run / "last.pt")
    assert "epoch 0" in one_error_line(cli("evaluate", run, "--data-dir", split_data))
