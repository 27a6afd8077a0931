"""The stream of frames ``lunar predict`` runs on: photo files, the frames of videos, numbered frames of a folder.

Every input of the plan becomes one or more ``FrameJob`` s, in order, made only as the
model gets to them: a photo is one job (its file is read by the pool), a video gives a
job per sampled frame, decoded ahead on its own thread (``video.read_ahead``), so a long
video is never in memory at once. Frames that cannot be decoded are handed to ``fail``
and the stream goes on. With a video output (``-o out.mp4``) every job has its place
``seq`` in that video, and ``video_outputs`` opens one ``video.VideoSink`` per map.
NumPy and OpenCV only, like the rest of predict's input side (no torch).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from lunar_cli.data.probe import MAX_TILED_PIXELS
from lunar_cli.frames import FrameSize, model_scale_frames
from lunar_cli.predict_files import frame_targets, read_photo
from lunar_cli.video import VideoSink, read_ahead, read_video, video_sink


@dataclass
class FrameJob:
    """One frame to predict: a photo file, or a frame of a video already decoded."""
    order: tuple[int, int]  # (input number, frame number): records and failures are sorted by it
    input: str  # the photo, or the video the frame comes from
    targets: dict[str, str | None]  # the files (or videos) its maps go to
    about: dict[str, Any] = field(default_factory=dict)  # frame and time_s, for frames of a video or sequence
    image: np.ndarray | None = None  # a video's frame, RGB; None: read the file ``input``
    seq: int = 0  # its place in an output video


def frame_jobs(plan: dict[str, Any], jobs: list[int], every: int, fmt: str,
               fail: Callable[[tuple[int, int], str, str], None]) -> Iterator[FrameJob]:  # fmt: skip
    """Yield the FrameJobs of the inputs numbered ``jobs``, in order; frames a video cannot give go to ``fail(order, input, reason)``."""
    place = itertools.count()
    for job in jobs:
        path, about, targets = plan["inputs"][job], plan["sources"][job], plan["targets"][job]
        if about["kind"] != "video":
            numbered = {key: about[key] for key in ("frame", "time_s") if key in about}
            yield FrameJob((job, about.get("frame", 0)), path, targets, numbered, seq=next(place))
            continue
        with contextlib.closing(read_ahead(read_video(Path(path), every, about["frames"]))) as frames:
            for index, image, problem in frames:
                if problem is not None:
                    fail((job, index), path, problem)
                    continue
                named = targets if plan["video_out"] else frame_targets(targets, fmt, index)
                yield FrameJob((job, index), path, named, {"frame": index, "time_s": round(index / about["fps"], 6)},
                               image, next(place))  # fmt: skip


def expected_frames(plan: dict[str, Any], jobs: list[int], every: int) -> int | None:
    """Return how many frames the inputs numbered ``jobs`` should give (None: a video's header does not say)."""
    total = 0
    for job in jobs:
        about = plan["sources"][job]
        if about["kind"] == "video":
            if about["frames"] is None:
                return None
            total += math.ceil(about["frames"] / every)
        else:
            total += 1
    return total


def read_frame(job: FrameJob, size: FrameSize, tile: bool) -> tuple[np.ndarray, str | None, np.ndarray | None, float]:
    """Return (photo, conversion note, photo at the model's scale or None when tiled, seconds): the reader threads' job."""
    start = time.perf_counter()
    photo, note = (job.image, None) if job.image is not None else read_photo(Path(job.input),
                                                                           MAX_TILED_PIXELS if tile else None)  # fmt: skip
    small = None if tile else model_scale_frames(size, [photo])[0]
    return photo, note, small, time.perf_counter() - start


@contextlib.contextmanager
def video_outputs(plan: dict[str, Any]) -> Iterator[dict[str, VideoSink]]:
    """Yield the open video of each map (``{"mask": sink, ...}``) when the plan writes videos, else {}.

    Each is renamed into place when the block ends without an exception, and removed otherwise.
    """
    out = plan["video_out"]
    with contextlib.ExitStack() as stack:
        if out is None:
            yield {}
            return
        yield {key: stack.enter_context(video_sink(Path(name), out["fps"]))
               for key, name in plan["targets"][0].items() if name is not None}  # fmt: skip
