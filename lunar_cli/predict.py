"""lunar predict: class masks for new photos and videos (files, folders, glob patterns or a list on stdin).

Reads top to bottom: ``collect_inputs`` -> ``describe_inputs`` -> ``plan_outputs`` (or
``plan_video_output``) -> ``predictor.load_predictor`` -> ``_predict_share``
(``predictor.model_passes``, ``postprocess.finish``, ``predictor.photo_summary``) ->
``run_predict``. The inputs become one stream of frames (``predict_stream.frame_jobs``: a
photo is a frame; a video, or a folder of numbered frames, gives one per sampled frame,
each with its frame number and time stamp). Frames are read and decoded ahead of the
model, and their maps finished and written behind it, in a thread pool sized to the
cores (OpenCV and NumPy release the GIL), so neither the model nor the disk waits on the
other; both queues are bounded, so a long video takes no more memory than a short one.
Records stay in input order, frame by frame. Preprocessing comes only from the model file (its scale,
normalisation); logits are upsampled back to the photo's own size, so masks match the
photo pixel for pixel. An exported ``.onnx`` model runs in ONNX Runtime and torch is
never imported. Under torchrun each rank predicts its share of the inputs.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

from lunar_cli.config import Config, PredictConfig
from lunar_cli.console import LunarError, first_line, info, track, warn
from lunar_cli.data.probe import MAX_PIXELS, MAX_TILED_PIXELS
from lunar_cli.model_files import describe_choice, find_model
from lunar_cli.parallel import cpu_cores
from lunar_cli.postprocess import finish
from lunar_cli.predict_files import (collect_inputs, describe_inputs, output_images, plan_outputs, plan_video_output,
                                     write_outputs)  # fmt: skip
from lunar_cli.predict_stream import FrameJob, expected_frames, frame_jobs, read_frame, video_outputs
from lunar_cli.predictor import Predictor, load_predictor, model_passes, photo_summary, tiled_logits
from lunar_cli.rundir import run_files
from lunar_cli.runtime import Dist, broadcast, setup_distributed, teardown_distributed
from lunar_cli.video import DEFAULT_FPS, VideoSink, is_video


def _make_plan(inputs, output: Path, model, runs_dir, options: PredictConfig, extras) -> dict[str, Any]:
    """Return the whole job as plain values (inputs, what each is, output files, model, problems), for rank 0 to share."""
    paths, problems, sequences = collect_inputs(inputs)
    if not paths:
        _refuse(problems, inputs)
    paths, sources, unreadable = describe_inputs(paths, sequences, options.every, options.fps,
                                                 MAX_TILED_PIXELS if options.tile else MAX_PIXELS)  # fmt: skip
    problems += unreadable
    if not paths:
        _refuse(problems, inputs)
    model_path, how = find_model(model, runs_dir)
    model_files = [model_path, *run_files(model_path.parent)]
    video_out = None
    if is_video(output):
        targets = [plan_video_output(output, options.format, extras, paths, sequences, model_files)] * len(paths)
        fps = sources[0]["fps"] if sources[0]["kind"] == "video" else options.fps or DEFAULT_FPS
        video_out = {"fps": fps / options.every}  # the video plays in real time
    else:
        targets = plan_outputs(paths, output, options.format, extras, model_files)
    return {"inputs": [str(p) for p in paths], "sources": sources, "targets": targets, "video_out": video_out,
            "problems": problems, "model": str(model_path), "how": how}  # fmt: skip


def _refuse(problems: list[dict[str, str]], inputs: list[str]) -> None:
    """Raise the LunarError of a job left with nothing to predict."""
    if problems:
        raise LunarError(problems[0]["reason"] + ("" if len(problems) == 1 else f" (and {len(problems) - 1} more)"))
    raise LunarError(f"no images found in {' '.join(inputs)}: give image or video files, folders or patterns")


def _shared_plan(dist, make) -> dict[str, Any]:
    """Return ``make()`` computed on rank 0 and sent to every rank (its LunarError raised on all)."""
    payload: dict[str, Any] = {}
    if dist.is_main:
        try:
            payload = make()
        except LunarError as exc:
            if not dist.enabled:
                raise
            payload = {"error": str(exc), "exit_code": exc.exit_code}
    payload = broadcast(payload, dist)
    if "error" in payload:
        raise LunarError(payload["error"], payload["exit_code"])
    return payload


def run_predict(
    inputs: list[str], *, output: Path | None, model: Path | None, runs_dir: Path, options: "PredictConfig",
    device: str = "auto", amp: bool | None = None, channels_last: bool | None = None, progress: bool = True,
) -> dict:  # fmt: skip
    """Predict masks for the inputs; return {"model", "records", "failed", "written", "seconds", "frames_per_second"}.

    Each record: input (and frame, time_s for frames of a video or numbered sequence),
    output files, width, height, class_fractions, seconds (and hazard, uncertainty and
    out_of_distribution when asked). Files that cannot be read are warned
    about, skipped and listed in ``failed``; with ``options.strict`` the first one stops
    the batch with a LunarError (outputs already written stay). Under torchrun rank 0
    returns every rank's records, in input order; other ranks return their own. ``output``
    None: ``runs_dir/predict``.
    """
    output = Path(output) if output is not None else Path(runs_dir) / "predict"
    if options.tta and options.tile:
        raise LunarError("--tta with --tile: tiles are already blended from overlapping windows; choose one")
    dist, where = Dist(), device  # one process: nothing to set up, and no torch import for an ONNX model
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if Path(str(model)).suffix.lower() == ".onnx":
            raise LunarError(f"{model}: an ONNX model runs in one process; run lunar predict without torchrun")
        if is_video(output):
            raise LunarError(f"{output}: one video is written by one process; run lunar predict without torchrun")
        dist, where = setup_distributed(device)  # this rank's own GPU
    extras = [name for name, on in (("hazard", options.hazard), ("uncertainty", options.uncertainty)) if on]
    try:
        plan = _shared_plan(dist, lambda: _make_plan(inputs, output, model, runs_dir, options, extras))
        said = describe_choice(Path(plan["model"]), plan["how"], runs_dir)
        if dist.is_main and said:
            info(said)
        if options.strict and plan["problems"]:
            raise LunarError(f"{plan['problems'][0]['reason']} (--strict: nothing predicted)")
        for problem in plan["problems"] if dist.is_main else []:
            warn(problem["reason"])
        loaded = load_predictor(Path(plan["model"]), where, amp, channels_last)
        if options.uncertainty and loaded.spec.ood_threshold is None:
            raise LunarError(
                f"{plan['model']}: no calibration in this model (trained or exported by an older lunar); "
                "--uncertainty needs it: train the model again, or leave --uncertainty out"
            )
        jobs = list(range(len(plan["inputs"])))[dist.rank :: dist.world_size]
        start = time.perf_counter()
        done, failed = _predict_share(loaded, plan, jobs, options, progress=progress and dist.is_main)
        everyone_failed = failed
        if dist.enabled:
            done, failed, everyone_failed = _gather(dist, done, failed)
        if options.strict and everyone_failed:
            first = min(everyone_failed, key=lambda f: f["order"])
            raise LunarError(f"{first['reason']} (--strict: stopped; outputs already written are kept)")
        failed = (plan["problems"] if dist.is_main else []) + [
            {key: f[key] for key in ("input", "frame", "reason") if key in f} for f in sorted(failed, key=lambda f: f["order"])
        ]
        records = [record for _, record in sorted(done, key=lambda pair: pair[0])]
        seconds = time.perf_counter() - start
        return {"model": plan["model"], "records": records, "failed": failed,
                "written": len({f for r in records for f in r["output"]}),  # frames of one video share its file
                "seconds": round(seconds, 3), "frames_per_second": round(len(records) / max(seconds, 1e-9), 3)}
    finally:
        teardown_distributed(dist)


def predict_command(cfg: Config, inputs: list[str], output: Path | None, model: Path | str | None,
                    progress: bool = True) -> dict:  # fmt: skip
    """Do what ``lunar predict`` was asked: masks for ``inputs`` in ``output`` with ``model`` (default: the newest run)."""
    return run_predict(inputs, output=output, model=model, runs_dir=cfg.runs_dir, options=cfg.predict,
                       device=cfg.device, amp=cfg.amp, channels_last=cfg.channels_last, progress=progress)  # fmt: skip


def _gather(dist, done: list, failed: list) -> tuple[list, list, list]:
    """Return (done, failed) merged over ranks on rank 0 (this rank's own elsewhere), and every rank's failures.

    Every rank learns of every failure so that --strict stops all of them alike.
    """
    import torch.distributed as tdist  # heavy: only under torchrun, where torch is loaded already

    everything: list[Any] = [None] * dist.world_size
    tdist.all_gather_object(everything, (done, failed))
    everyone_failed = [f for _, rank_failed in everything for f in rank_failed]
    if not dist.is_main:
        return done, failed, everyone_failed
    return [pair for rank_done, _ in everything for pair in rank_done], everyone_failed, everyone_failed


def _finish(
    model: Predictor, job: FrameJob, photo: np.ndarray, passes: list[np.ndarray], options: PredictConfig,
    seconds: float, videos: dict[str, VideoSink],
) -> tuple[tuple[int, int], dict]:  # fmt: skip
    """Turn one frame's logits into its maps, write them (or add them to the videos), and return (order, its record)."""
    start = time.perf_counter()
    height, width = photo.shape[:2]
    outputs = finish(passes, height, width, model.spec.temperature, probs=options.format == "probs",
                     uncertainty=options.uncertainty)  # fmt: skip
    summary, hazard_maps = photo_summary(model.spec, outputs, options.hazard_margin if options.hazard else None)
    if videos:
        images = output_images(job.targets, options.format, photo, outputs, summary, hazard_maps)
        for key, sink in videos.items():
            sink.put(job.seq, images[key])
        files = [job.targets[key] for key in videos]
    else:
        files = write_outputs(job.targets, options.format, photo, outputs, model.spec.class_names, summary, hazard_maps)
    record = {"input": job.input, **job.about, "output": files, "width": width, "height": height, **summary,
              **model.runs_on(), "seconds": round(seconds + time.perf_counter() - start, 4)}  # fmt: skip
    return job.order, record


@contextlib.contextmanager
def _one_cv2_thread_each():
    """Let each pool thread run OpenCV on one core (the pool already spreads the photos over the cores)."""
    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def _failure(path: str, order: tuple[int, int], exc: BaseException | str, doing: str, say: bool,
             frame: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Return the failure record of one input or frame (and warn in one line unless --strict, whose error says it)."""
    if isinstance(exc, str):
        reason = exc
    else:
        what = path if frame is None else f"{path} frame {frame}"
        reason = first_line(exc, 1000) if isinstance(exc, LunarError) else f"{what}: {doing} ({first_line(exc)})"
    if say:
        warn(reason)
    return {"input": path, "reason": reason, "order": order, **({} if frame is None else {"frame": frame})}


READ_ERRORS = (LunarError, cv2.error, OSError)  # what a bad file or frame raises; anything else is a bug


def _predict_share(
    model: Predictor, plan: dict[str, Any], jobs: list[int], options: PredictConfig, *, progress: bool,
) -> tuple[list[tuple[tuple[int, int], dict]], list[dict[str, Any]]]:  # fmt: skip
    """Predict the inputs numbered ``jobs``, reading ahead and writing behind in a thread pool.

    Returns ([(order, record)], failures). The model runs here, on batches of same-size
    frames; at most ``depth`` frames are read ahead and ``depth`` wait to be written, so
    memory stays flat however many frames a video has.
    """
    cores = cpu_cores()
    depth = 2 * options.batch_size + cores  # enough read-ahead to keep the model busy
    failed: list[dict[str, Any]] = []
    done: list[tuple[tuple[int, int], dict]] = []
    said: set[str] = set()

    def fail(order: tuple[int, int], path: str, exc: BaseException | str, doing: str = "cannot read") -> None:
        frame = order[1] if plan["sources"][order[0]]["kind"] == "video" else None
        failed.append(_failure(path, order, exc, doing, not options.strict, frame))

    # The videos close after the pool: every frame a thread still finishes reaches them first.
    with _one_cv2_thread_each(), video_outputs(plan) as videos, \
            ThreadPoolExecutor(max(2, cores), thread_name_prefix="lunar-io") as pool:  # fmt: skip
        writes: deque = deque()
        pending: list[tuple[FrameJob, np.ndarray, np.ndarray, float]] = []  # (job, photo, at the model's scale, seconds)

        def settle(job: FrameJob, future) -> None:
            try:
                done.append(future.result())
            except READ_ERRORS as exc:  # a map that cannot be written fails its frame alone
                fail(job.order, job.input, exc, "cannot write its outputs")
                for sink in videos.values():
                    sink.skip(job.seq)

        def finish_later(job: FrameJob, photo: np.ndarray, passes: list[np.ndarray], seconds: float) -> None:
            writes.append((job, pool.submit(_finish, model, job, photo, passes, options, seconds, videos)))
            while writes and (len(writes) > depth or writes[0][1].done()):  # the oldest first: records in order
                settle(*writes.popleft())

        def flush() -> None:
            if not pending:
                return
            start = time.perf_counter()
            passes = model_passes(model, np.stack([small for _, _, small, _ in pending]), options.tta)
            share = (time.perf_counter() - start) / len(pending)
            for i, (job, photo, _, seconds) in enumerate(pending):
                finish_later(job, photo, [p[i] for p in passes], seconds + share)
            pending.clear()

        stream = frame_jobs(plan, jobs, options.every, options.format, fail)
        with contextlib.closing(_read_ahead(stream, pool, model, options, depth)) as ready:
            total = expected_frames(plan, jobs, options.every)
            for job, future in track(ready, "predicting", total=total, quiet=not progress, unit="frames"):
                if options.strict and failed:
                    break
                batch = _take(model, job, future, fail, videos, said)
                if batch is None:
                    continue
                photo, small, seconds = batch
                if small is None:  # tiled: the windows are the batch
                    start = time.perf_counter()
                    logits = tiled_logits(model, photo, options.tile_overlap, options.batch_size)
                    finish_later(job, photo, [logits], seconds + time.perf_counter() - start)
                    continue
                if pending and pending[0][2].shape != small.shape:  # a batch holds frames of one size
                    flush()
                pending.append((job, photo, small, seconds))
                if len(pending) >= options.batch_size:
                    flush()
        flush()
        while writes:
            settle(*writes.popleft())
    return done, failed


def _read_ahead(stream: Iterator[FrameJob], pool: ThreadPoolExecutor, model: Predictor, options: PredictConfig,
                depth: int) -> Iterator[tuple[FrameJob, Any]]:  # fmt: skip
    """Yield (job, future of its read frame) in order, keeping ``depth`` frames being read ahead in ``pool``."""
    ahead: deque = deque()

    def read_next() -> None:
        job = next(stream, None)
        if job is not None:
            ahead.append((job, pool.submit(read_frame, job, model.spec.frame_size, options.tile)))

    try:
        for _ in range(depth):
            read_next()
        while ahead:
            item = ahead.popleft()
            read_next()
            yield item
    finally:
        stream.close()


def _take(model: Predictor, job: FrameJob, future, fail, videos: dict[str, VideoSink], said: set[str]):
    """Return (photo, at the model's scale or None when tiled, seconds) of a read frame, or None when it failed.

    Says once per kind of photo what was converted (noted in ``said``), and once that a very large frame is better tiled.
    """
    try:
        photo, note, small, seconds = future.result()
    except READ_ERRORS as exc:
        fail(job.order, job.input, exc, "cannot read")
        for sink in videos.values():
            sink.skip(job.seq)
        return None
    if note and note not in said:
        said.add(note)
        warn(f"{job.input}: {note} photo, converted to 8-bit RGB (said once for all such photos)")
    if small is not None and small.shape[0] * small.shape[1] > 64 * model.spec.window**2 and "large" not in said:
        said.add("large")
        info(f"{job.input} is {photo.shape[1]}x{photo.shape[0]} ({small.shape[1]}x{small.shape[0]} at the "
             "model's scale): --tile bounds the memory it takes")  # fmt: skip
    return photo, small, seconds
