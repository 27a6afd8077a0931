"""Videos and numbered image sequences: frames read one at a time, videos written frame by frame and renamed into place.

OpenCV (its FFmpeg backend) decodes and encodes; no torch. A video is never loaded
whole: ``read_video`` yields one frame at a time (``read_ahead`` decodes a few frames
ahead on a thread of its own, OpenCV decoding without the GIL), so memory stays flat
however long the video is. A frame that cannot be decoded is reported and skipped, and
a video that ends before the frame count in its header is reported where it ended; the
frames around both are still given. ``VideoSink`` writes frames in their order even when
they are finished out of order, into a temporary file renamed onto the target at the end
(``files.atomic_path``), so an interrupted run never leaves a half-written video.
"""

from __future__ import annotations

import contextlib
import math
import queue
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence, TypeVar

import cv2
import numpy as np

from lunar_cli.console import LunarError
from lunar_cli.data.probe import check_pixel_budget
from lunar_cli.files import atomic_path

T = TypeVar("T")

# Containers lunar reads and writes through OpenCV -> the codec it writes them with: MPEG-4 Part 2
# and Motion JPEG are in every OpenCV build (H.264 is not in the pip wheels); FFV1 is lossless.
VIDEO_CODECS = {".mp4": "mp4v", ".mov": "mp4v", ".m4v": "mp4v", ".avi": "MJPG", ".mkv": "FFV1"}
VIDEO_SUFFIXES = tuple(VIDEO_CODECS)
DEFAULT_FPS = 30.0  # frames per second of a video made of numbered frames, or of one whose header has no rate
BAD_RUN_END = 8  # this many frames in a row that cannot be decoded: the video has ended
READ_AHEAD = 8  # decoded frames held ahead of the model per video
NUMBERED = re.compile(r"^(.*?)(\d+)$")  # a frame's stem: any prefix, then its number


def is_video(path: Path | str) -> bool:
    """Return whether ``path`` is named like a video lunar reads (by its suffix)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


@dataclass(frozen=True)
class VideoInfo:
    """What a video's header says: frame rate, frame count (None: not given) and frame size."""
    fps: float | None
    frames: int | None
    width: int
    height: int


def probe_video(path: Path, max_pixels: int) -> VideoInfo:
    """Return the header of the video at ``path``, or raise LunarError: missing, unreadable, or frames over ``max_pixels``."""
    path = Path(path)
    if not path.is_file():
        raise LunarError(f"{path}: no such file" if not path.exists() else f"{path}: not a regular file; give a video file")
    if path.stat().st_size == 0:
        raise LunarError(f"{path}: file is empty")
    try:
        capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    except (UnicodeEncodeError, cv2.error) as exc:  # OpenCV takes UTF-8 names only
        raise LunarError(f"{path}: OpenCV cannot open a video by this name ({type(exc).__name__}); rename it") from exc
    try:
        width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if not capture.isOpened() or width <= 0 or height <= 0:
            raise LunarError(f"{path}: not a readable video (damaged, cut off before its index, or a codec "
                             "OpenCV lacks); convert it, e.g. ffmpeg -i IN -c:v mjpeg OUT.avi")  # fmt: skip
        fps, count = capture.get(cv2.CAP_PROP_FPS), capture.get(cv2.CAP_PROP_FRAME_COUNT)
    finally:
        capture.release()
    check_pixel_budget(path, width, height, max_pixels)
    return VideoInfo(fps=float(fps) if math.isfinite(fps) and fps > 0 else None,
                     frames=int(count) if math.isfinite(count) and count > 0 else None, width=width, height=height)  # fmt: skip


def read_video(path: Path, every: int = 1, frames: int | None = None) -> Iterator[tuple[int, np.ndarray | None, str | None]]:
    """Yield (frame index, RGB frame, None) for every ``every``-th frame, and (index, None, what is wrong) for bad ones.

    A run of frames that cannot be decoded, followed by good ones, is one report (and
    skipped); the video ends after ``BAD_RUN_END`` bad frames in a row, reported when that
    is before the ``frames`` its header gives. Frames between samples are skipped without
    being converted.
    """
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    index, bad_from = 0, None  # the first frame of the current run of undecodable frames
    try:
        while True:
            wanted = index % every == 0
            ok = capture.grab()
            image = capture.retrieve()[1] if ok and wanted else None
            if ok and (image is not None or not wanted):
                if bad_from is not None and any(i % every == 0 for i in range(bad_from, index)):
                    yield bad_from, None, _bad_run(path, bad_from, index - 1)
                bad_from = None
                if image is not None:
                    yield index, cv2.cvtColor(image, cv2.COLOR_BGR2RGB), None
            elif bad_from is None:
                bad_from = index
            elif index - bad_from + 1 >= BAD_RUN_END:
                break
            index += 1
    finally:
        capture.release()
    end = index if bad_from is None else bad_from
    if frames is not None and end < frames:
        yield end, None, f"{path}: the video ends at frame {end} of the {frames} its header gives (cut off or damaged)"


def _bad_run(path: Path, first: int, last: int) -> str:
    """Return the report of frames ``first`` to ``last`` that could not be decoded."""
    which = f"frame {first}" if first == last else f"frames {first} to {last}"
    return f"{path}: {which} cannot be decoded (damaged); skipped"


def read_ahead(items: Iterator[T], depth: int = READ_AHEAD) -> Iterator[T]:
    """Yield ``items`` while a thread of its own produces up to ``depth`` of them ahead.

    An exception in the producer is raised here, in order; stopping early stops the producer.
    """
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def offer(item: Any) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer((item, None)):
                    break
            offer((done, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            offer((done, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, name="lunar-video-reader", daemon=True)
    worker.start()
    try:
        while True:
            item, error = slots.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        worker.join()


def numbered_order(paths: Sequence[Path]) -> list[Path] | None:
    """Return ``paths`` in the order of the number ending each name, when they are one numbered sequence, else None.

    One sequence: at least two files, every stem a shared prefix then a number
    (``frame_0001.png``, ``img7.png``), one suffix, no number twice.
    """
    if len(paths) < 2:
        return None
    parts = [NUMBERED.match(p.stem) for p in paths]
    if not all(parts) or len({(m.group(1), p.suffix.lower()) for m, p in zip(parts, paths)}) != 1:
        return None
    numbers = [int(m.group(2)) for m in parts]
    if len(set(numbers)) != len(numbers):
        return None
    return [p for _, p in sorted(zip(numbers, paths))]


class VideoSink:
    """A video file being written: frames put in any order are encoded in order (``seq`` 0, 1, 2, ...).

    Every ``seq`` must be put or skipped. Frames must all be the size of the first.
    """

    def __init__(self, tmp: Path, target: Path, fps: float) -> None:
        self.tmp, self.target, self.fps = tmp, target, fps
        self.frames = 0
        self._lock = threading.Lock()
        self._next = 0
        self._waiting: dict[int, np.ndarray | None] = {}
        self._writer: Any = None
        self._size: tuple[int, int] | None = None
        self._released = False

    def put(self, seq: int, rgb: np.ndarray) -> None:
        """Add frame ``seq`` (RGB (H, W, 3) or grayscale (H, W) uint8); a frame of another size fails alone (LunarError)."""
        image = cv2.cvtColor(rgb, cv2.COLOR_GRAY2BGR if rgb.ndim == 2 else cv2.COLOR_RGB2BGR)
        with self._lock:
            size = (image.shape[1], image.shape[0])
            if self._size is not None and size != self._size:
                self._waiting[seq] = None
                self._drain()
                raise LunarError(f"{self.target}: this frame is {size[0]}x{size[1]} but the video is "
                                 f"{self._size[0]}x{self._size[1]}; frame left out")  # fmt: skip
            self._size = size
            self._waiting[seq] = image
            self._drain()

    def skip(self, seq: int) -> None:
        """Leave frame ``seq`` out (it failed), so the frames after it are not held back."""
        with self._lock:
            self._waiting.setdefault(seq, None)
            self._drain()

    def _drain(self) -> None:
        while self._next in self._waiting and not self._released:
            image = self._waiting.pop(self._next)
            self._next += 1
            if image is None:
                continue
            if self._writer is None:
                fourcc = cv2.VideoWriter_fourcc(*VIDEO_CODECS[self.target.suffix.lower()])
                self._writer = cv2.VideoWriter(str(self.tmp), cv2.CAP_FFMPEG, fourcc, self.fps, self._size)
                if not self._writer.isOpened():
                    raise LunarError(f"{self.target}: OpenCV cannot write this video; try another name: .mp4 or .avi")
            self._writer.write(image)
            self.frames += 1

    def release(self) -> None:
        """Finish the encoding (frames still held back, or put later, are dropped)."""
        with self._lock:
            self._released = True
        if self._writer is not None:
            self._writer.release()
            self._writer = None


class _NoFrames(Exception):
    """No frame reached the video: nothing is written."""


@contextlib.contextmanager
def video_sink(path: Path, fps: float) -> Iterator[VideoSink]:
    """Yield a VideoSink writing ``path`` at ``fps``; renamed into place at the end, nothing left when no frame was put."""
    path = Path(path)
    try:
        with atomic_path(path, suffix=path.suffix) as tmp:  # the suffix tells OpenCV the container
            sink = VideoSink(tmp, path, fps)
            try:
                yield sink
            finally:
                sink.release()
            if sink.frames == 0:
                raise _NoFrames
    except _NoFrames:
        pass
