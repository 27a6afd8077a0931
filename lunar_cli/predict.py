"""lunar predict: class masks for new photos (files, folders, glob patterns or a list on stdin).

Reads top to bottom: ``collect_inputs`` -> ``plan_outputs`` -> ``predictor.load_predictor``
-> ``_predict_share`` (``predictor.model_passes``, ``postprocess.finish``,
``predictor.photo_summary``) -> ``run_predict``. Photos are read and decoded ahead of the model, and
their maps finished and written behind it, in a thread pool sized to the cores (OpenCV
and NumPy release the GIL), so neither the model nor the disk waits on the other; records
stay in input order. Preprocessing comes only from the model file (its scale,
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
from typing import Any

import cv2
import numpy as np

from lunar_cli.config import Config, PredictConfig
from lunar_cli.console import LunarError, first_line, info, track, warn
from lunar_cli.data.probe import MAX_TILED_PIXELS
from lunar_cli.frames import model_scale_frames
from lunar_cli.model_files import describe_choice, find_model
from lunar_cli.parallel import cpu_cores
from lunar_cli.postprocess import finish
from lunar_cli.predict_files import collect_inputs, plan_outputs, read_photo, write_outputs
from lunar_cli.predictor import Predictor, load_predictor, model_passes, photo_summary, tiled_logits
from lunar_cli.rundir import run_files
from lunar_cli.runtime import Dist, broadcast, setup_distributed, teardown_distributed


def _make_plan(inputs, output, model, runs_dir, fmt, extras) -> dict[str, Any]:
    """Return the whole job as plain values (inputs, output files, model, problems), for rank 0 to share."""
    paths, problems = collect_inputs(inputs)
    if not paths:
        if problems:
            raise LunarError(problems[0]["reason"] + ("" if len(problems) == 1 else f" (and {len(problems) - 1} more)"))
        raise LunarError(f"no images found in {' '.join(inputs)}: give image files, folders or patterns")
    model_path, how = find_model(model, runs_dir)
    plan = plan_outputs(paths, output, fmt, extras, [model_path, *run_files(model_path.parent)])
    return {"inputs": [str(p) for p in paths], "targets": plan, "problems": problems,
            "model": str(model_path), "how": how}  # fmt: skip


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
    """Predict masks for the inputs; return {"model":..., "records": [...], "failed": [...], "written": n}.

    Each record: input, output files, width, height, class_fractions, seconds (and hazard,
    uncertainty and out_of_distribution when asked). Files that cannot be read are warned
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
        dist, where = setup_distributed(device)  # this rank's own GPU
    extras = [name for name, on in (("hazard", options.hazard), ("uncertainty", options.uncertainty)) if on]
    try:
        plan = _shared_plan(dist, lambda: _make_plan(inputs, output, model, runs_dir, options.format, extras))
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
        done, failed = _predict_share(loaded, plan, jobs, options, progress=progress and dist.is_main)
        everyone_failed = failed
        if dist.enabled:
            done, failed, everyone_failed = _gather(dist, done, failed)
        if options.strict and everyone_failed:
            first = min(everyone_failed, key=lambda f: f["order"])
            raise LunarError(f"{first['reason']} (--strict: stopped; outputs already written are kept)")
        failed = (plan["problems"] if dist.is_main else []) + [
            {"input": f["input"], "reason": f["reason"]} for f in sorted(failed, key=lambda f: f["order"])
        ]
        records = [record for _, record in sorted(done, key=lambda pair: pair[0])]
        return {"model": plan["model"], "records": records, "failed": failed,
                "written": sum(len(r["output"]) for r in records)}  # fmt: skip
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


def _read(path: str, model: Predictor, tile: bool) -> tuple[np.ndarray, str | None, np.ndarray | None, float]:
    """Return (photo, conversion note, photo at the model's scale or None when tiled, seconds): the reader threads' job."""
    start = time.perf_counter()
    photo, note = read_photo(Path(path), MAX_TILED_PIXELS if tile else None)
    small = None if tile else model_scale_frames(model.spec.frame_size, [photo])[0]
    return photo, note, small, time.perf_counter() - start


def _finish(
    model: Predictor, plan: dict[str, Any], job: int, photo: np.ndarray, passes: list[np.ndarray],
    options: PredictConfig, seconds: float,
) -> tuple[int, dict]:  # fmt: skip
    """Turn one photo's logits into its maps, write them, and return (job, its record): the writer threads' job."""
    start = time.perf_counter()
    height, width = photo.shape[:2]
    outputs = finish(passes, height, width, model.spec.temperature, probs=options.format == "probs",
                     uncertainty=options.uncertainty)  # fmt: skip
    summary, hazard_maps = photo_summary(model.spec, outputs, options.hazard_margin if options.hazard else None)
    files = write_outputs(plan["targets"][job], options.format, photo, outputs, model.spec.class_names, summary,
                          hazard_maps)  # fmt: skip
    record = {"input": plan["inputs"][job], "output": files, "width": width, "height": height, **summary,
              **model.runs_on(), "seconds": round(seconds + time.perf_counter() - start, 4)}  # fmt: skip
    return job, record


@contextlib.contextmanager
def _one_cv2_thread_each():
    """Let each pool thread run OpenCV on one core (the pool already spreads the photos over the cores)."""
    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


def _failure(path: str, job: int, exc: BaseException, doing: str, say: bool) -> dict[str, Any]:
    """Return the failure record of one input (and warn in one line unless --strict, whose error says it)."""
    reason = first_line(exc, 1000) if isinstance(exc, LunarError) else f"{path}: {doing} ({first_line(exc)})"
    if say:
        warn(reason)
    return {"input": path, "reason": reason, "order": job}


def _predict_share(
    model: Predictor, plan: dict[str, Any], jobs: list[int], options: PredictConfig, *, progress: bool,
) -> tuple[list[tuple[int, dict]], list[dict[str, Any]]]:  # fmt: skip
    """Predict the inputs numbered ``jobs``, reading ahead and writing behind in a thread pool.

    Returns ([(job, record)], failures). The model runs here, on batches of same-size photos.
    """
    cores = cpu_cores()
    failed: list[dict[str, Any]] = []

    def fail(job: int, exc: BaseException, doing: str) -> None:
        failed.append(_failure(plan["inputs"][job], job, exc, doing, say=not options.strict))

    said: set[str] = set()
    writes = []
    pending: list[tuple[int, np.ndarray, np.ndarray, float]] = []  # (job, photo, at the model's scale, seconds)

    with _one_cv2_thread_each(), ThreadPoolExecutor(max(2, cores), thread_name_prefix="lunar-io") as pool:

        def flush() -> None:
            if not pending:
                return
            start = time.perf_counter()
            passes = model_passes(model, np.stack([small for _, _, small, _ in pending]), options.tta)
            share = (time.perf_counter() - start) / len(pending)
            for i, (job, photo, _, seconds) in enumerate(pending):
                writes.append((job, pool.submit(_finish, model, plan, job, photo, [p[i] for p in passes], options,
                                                seconds + share)))  # fmt: skip
            pending.clear()

        ahead = deque()
        queue = iter(jobs)

        def read_next() -> None:
            job = next(queue, None)
            if job is not None:
                ahead.append((job, pool.submit(_read, plan["inputs"][job], model, options.tile)))

        for _ in range(2 * options.batch_size + cores):  # enough read-ahead to keep the model busy
            read_next()
        for _ in track(range(len(jobs)), "predicting", total=len(jobs), quiet=not progress):
            job, future = ahead.popleft()
            read_next()
            path = plan["inputs"][job]
            try:
                photo, note, small, seconds = future.result()
            except (LunarError, cv2.error, OSError) as exc:
                fail(job, exc, "cannot read")
                if options.strict:
                    break
                continue
            if note and note not in said:
                said.add(note)
                warn(f"{path}: {note} photo, converted to 8-bit RGB (said once for all such photos)")
            if options.tile:
                start = time.perf_counter()
                logits = tiled_logits(model, photo, options.tile_overlap, options.batch_size)
                writes.append((job, pool.submit(_finish, model, plan, job, photo, [logits], options,
                                                seconds + time.perf_counter() - start)))  # fmt: skip
                continue
            if small.shape[0] * small.shape[1] > 64 * model.spec.window**2 and "large" not in said:
                said.add("large")
                info(f"{path} is {photo.shape[1]}x{photo.shape[0]} ({small.shape[1]}x{small.shape[0]} at the "
                     "model's scale): --tile bounds the memory it takes")  # fmt: skip
            if pending and pending[0][2].shape != small.shape:  # a batch holds photos of one size
                flush()
            pending.append((job, photo, small, seconds))
            if len(pending) >= options.batch_size:
                flush()
        flush()
        done = []
        for job, future in writes:  # a mask that cannot be written fails its photo alone
            try:
                done.append(future.result())
            except (LunarError, cv2.error, OSError) as exc:
                fail(job, exc, "cannot write its outputs")
    return done, failed
