"""What ``lunar serve`` does with one upload: its bytes in, a mask, a map or a ``predict --json`` record out.

Torch-free and free of web libraries (HTTP is ``serve_app``'s), so it is the same engine
as ``predict``'s, fed from memory instead of files: an upload gets the checks a file gets
(``classes.decode_image_bytes``: header and end marker, the pixel budget read from the
header before decoding, PNG checksums), is sized for the model
(``frames.model_scale_frames``), run through ``predictor.model_passes`` by a
``FrameBatcher`` (concurrent same-size frames in one forward pass, where that is faster),
finished by ``postprocess.finish`` and summed up by ``predictor.photo_summary``; its maps
are drawn as ``predict`` writes them. Nothing is ever written to disk.
"""

from __future__ import annotations

import base64
import queue
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from lunar_cli.classes import CLASSES, decode_image_bytes, encode_mask, encode_png, to_rgb_uint8
from lunar_cli.console import LunarError, json_text
from lunar_cli.data.probe import probe_bytes
from lunar_cli.frames import model_scale_frames
from lunar_cli.hazard import hazard_image
from lunar_cli.postprocess import Outputs, finish
from lunar_cli.predict_files import overlay
from lunar_cli.predictor import Predictor, model_passes, photo_summary

# What POST /predict can answer (its ?format=): a picture as PNG, or the photo's record as JSON.
PICTURES = ("rgb", "index", "overlay", "hazard", "uncertainty")
ANSWERS = (*PICTURES, "json")
MAPS = ("mask", "overlay", "hazard", "uncertainty")  # the pictures ?maps=true adds to a record, as data: URLs


class UploadError(LunarError):
    """A request the server refuses: a one-line message and the HTTP status it is answered with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def plural(n: int, noun: str) -> str:
    """Return "1 photo", "2 photos"."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def read_upload(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """Return an uploaded image as (H, W, 3) uint8 RGB, checked as files are; 413 when over ``max_pixels``.

    Grayscale, RGBA and 16-bit images are converted, JPEGs turned upright by their EXIF
    orientation (``predict_files.read_photo`` does the same with files).
    """
    width, height = probe_bytes(data, name)
    if width * height > max_pixels:
        size = f"{width}x{height} pixels ({width * height / 1e6:.1f} megapixels)"
        limit = f"this server's limit of {max_pixels / 1e6:g} megapixels (serve.max_pixels)"
        raise UploadError(f"{name}: {size} is over {limit}; downscale it", 413)
    return to_rgb_uint8(decode_image_bytes(data, name, "image", max_pixels), name)


def photo_and_frame(model: Predictor, data: bytes, name: str, max_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (the uploaded photo, checked by ``read_upload``; it at the model's scale, as predict feeds it)."""
    photo = read_upload(data, name, max_pixels)
    return photo, model_scale_frames(model.spec.frame_size, [photo])[0]


def outputs_for(model: Predictor, photo: np.ndarray, passes: list[np.ndarray], answer: str) -> Outputs:
    """Return the photo's outputs at its own size: classes, and the uncertainty when the answer shows it."""
    height, width = photo.shape[:2]
    return finish(passes, height, width, model.spec.temperature, uncertainty=answer in ("uncertainty", "json"))


def picture(kind: str, photo: np.ndarray, outputs: Outputs, summary: dict[str, Any], hazard_maps: tuple | None,
            ) -> bytes:  # fmt: skip
    """Return one picture as PNG bytes, drawn as ``predict`` writes it: mask, indices, overlay, hazard, uncertainty."""
    if kind in ("rgb", "mask"):
        return encode_png(encode_mask(outputs.classes))
    if kind == "index":
        return encode_png(outputs.classes)
    if kind == "overlay":
        return encode_png(overlay(photo, outputs.classes))
    if kind == "hazard":
        hazard, safe = hazard_maps
        return encode_png(hazard_image(hazard, safe, summary["hazard"]["largest_safe_region"]))
    # 0 (black): certain; 255 (white): every class equally likely (predict's _uncertainty.png).
    return encode_png(np.round(outputs.uncertainty * 255).astype(np.uint8))


def answer_photo(
    model: Predictor, photo: np.ndarray, passes: list[np.ndarray], *, answer: str, name: str, hazard_margin: int,
    maps: bool, started: float,
) -> tuple[bytes, str]:  # fmt: skip
    """Return (body, media type) of the answer to one photo: a PNG picture, or its record as JSON.

    The record has the keys of a ``predict --json --hazard --uncertainty`` record
    (``output`` is empty: nothing is written), ``seconds`` from decoding to here, and
    with ``maps`` the pictures of ``MAPS`` as data: URLs (what the web page shows).
    """
    outputs = outputs_for(model, photo, passes, answer)
    needs_summary = answer in ("json", "hazard")
    summary, hazard_maps = photo_summary(model.spec, outputs, hazard_margin) if needs_summary else ({}, None)
    if answer != "json":
        return picture(answer, photo, outputs, summary, hazard_maps), "image/png"
    height, width = photo.shape[:2]
    record: dict[str, Any] = {"input": name, "output": [], "width": width, "height": height, **summary,
                              **model.runs_on(), "seconds": round(time.perf_counter() - started, 4)}  # fmt: skip
    if maps:
        record["maps"] = {kind: "data:image/png;base64," + base64.b64encode(
            picture(kind, photo, outputs, summary, hazard_maps)).decode("ascii") for kind in MAPS}  # fmt: skip
    return json_text(record).encode("utf-8"), "application/json"


def model_card(model: Predictor, path: Path, how: str) -> dict[str, Any]:
    """Return what GET /model says: the model file, network, classes and colours, input rule, calibration, device."""
    spec = model.spec
    colours = {c["name"]: c.get("rgb") for c in spec.meta.get("classes", [])} or {c.name: list(c.rgb) for c in CLASSES}
    return {
        "model": str(path), "chosen": how, "backbone": spec.backbone,
        "classes": [{"index": i, "name": n, "rgb": colours.get(n)} for i, n in enumerate(spec.class_names)],
        "frame_size": spec.frame_size.describe(), "pad_multiple": spec.pad_multiple,
        "temperature": spec.temperature, "ood_threshold": spec.ood_threshold, **model.runs_on(),
    }  # fmt: skip


class FrameBatcher:
    """The one thread that runs the model: frames submitted together are run as one batch, per size.

    With ``window_s`` 0 no frame waits: a pass takes the first frame and every other one
    that queued while the model was busy (up to ``batch_size``), so a lone request pays no
    delay and concurrent ones share passes. A positive window holds the first frame that
    long for company. One thread also keeps the model's own threads from competing with
    themselves.
    """

    def __init__(self, model: Predictor, tta: bool, batch_size: int, window_s: float) -> None:
        self.model, self.tta, self.batch_size, self.window_s = model, tta, batch_size, window_s
        self.passes = self.frames = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="lunar-model", daemon=True)
        self._thread.start()

    def submit(self, frame: np.ndarray) -> Future:
        """Return a future of the frame's logits, one (C, h, w) array per pass (plain, then mirrored with TTA)."""
        future: Future = Future()
        self._queue.put((frame, future))
        return future

    def close(self) -> None:
        """Stop the thread once the frames already submitted are done."""
        self._queue.put(None)
        self._thread.join()

    def _take(self) -> tuple[list[tuple[np.ndarray, Future]], bool]:
        """Return (the next frames to run, whether the batcher was closed), waiting for the first."""
        first = self._queue.get()
        if first is None:
            return [], True
        batch, deadline = [first], time.monotonic() + self.window_s
        while len(batch) < self.batch_size:
            wait = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _run(self) -> None:
        closed = False
        while not closed:
            batch, closed = self._take()
            for shape in dict.fromkeys(frame.shape for frame, _ in batch):  # one pass per size, in arrival order
                group = [(frame, future) for frame, future in batch if frame.shape == shape]
                try:
                    passes = model_passes(self.model, np.stack([frame for frame, _ in group]), self.tta)
                except Exception as exc:  # noqa: BLE001 - the request that sent it answers with the error
                    for _, future in group:
                        future.set_exception(exc)
                    continue
                self.passes, self.frames = self.passes + 1, self.frames + len(group)
                for i, (_, future) in enumerate(group):
                    future.set_result([p[i] for p in passes])
