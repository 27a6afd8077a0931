"""Time `lunar serve` on this machine: one request against the engine's own time, and 4 clients against `lunar predict`.

Photos: rendered 720x480 PNGs; the model: the built-in one (`--model builtin`), in its
default precision on this CPU. The server runs as a user starts it (`lunar serve --port 0`,
a subprocess), is warmed up, then called over HTTP from this process.

(a) Latency of one frame, seconds, medians of many sequential requests (min-max), the two
    taken in turn frame by frame:
    engine - in-process, the server's own steps without HTTP: decode the PNG bytes, the
             model's pass on that one frame, the mask coloured and encoded as PNG
             (serve_engine.photo_and_frame, predictor.model_passes, serve_engine.answer_photo);
    server - `POST /predict` of the same bytes, body in, PNG mask out, measured by the client.
(b) Throughput, images/s: 4 clients each sending their share of the photos one after the
    other, all at once, against `lunar predict` on the folder of the same photos
    (run_predict in-process, warm, its default batch, masks written); the server as it starts
    (on a CPU: up to 4 queued frames a pass), at one frame a pass (`--batch-size 1`), and
    with a 20 ms window, to show what batching is worth here.
(c) The bare forward pass (model.logits) on one 720x480 frame repeated, images/s by batch
    size, in fp32 and the default precision: what a batch is worth to the model alone.

Runs alternate after a warm-up each.

    .venv/bin/python bench/bench_serve.py            # print the tables
    .venv/bin/python bench/bench_serve.py --write    # also update bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does; before torch loads

import numpy as np
from bench_predict import lunar_rate, make_photos, median_range
from bench_results import REPO, builtin_description, machine, update_section

from lunar_cli.config import PredictConfig

PREDICT_BATCH = PredictConfig().batch_size  # lunar predict as a user runs it

HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))
CLIENTS = 4
SERVERS = {"serve": [], "serve --batch-size 1": ["--batch-size", "1"],
           "serve --batch-size 4 --batch-window-ms 20": ["--batch-size", "4", "--batch-window-ms", "20"]}  # fmt: skip
BATCHES = (1, 2, 4, 8)


def start_server(extra: list[str]) -> tuple[subprocess.Popen, str]:
    """Start `lunar serve --model builtin --port 0 EXTRA`; return (process, its URL) once it serves."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "lunar_cli", "serve", "--model", "builtin", "--port", "0",
                             "--device", "cpu", *extra], env=env, stderr=subprocess.PIPE, text=True)  # fmt: skip
    for line in proc.stderr:
        found = re.search(r" at (http://\S+/): ", line)
        if found:
            return proc, found.group(1)
    raise SystemExit(f"lunar serve did not start (exit {proc.wait()})")


def post(url: str, body: bytes) -> float:
    """POST one photo; return the seconds until the whole mask came back."""
    start = time.perf_counter()
    req = urllib.request.Request(url + "predict", data=body, headers={"Content-Type": "image/png"})
    with HTTP.open(req, timeout=300) as answer:
        assert answer.status == 200 and answer.headers["Content-Type"] == "image/png"
        answer.read()
    return time.perf_counter() - start


def engine_time(model, body: bytes) -> float:
    """Return the seconds of one frame through the server's own steps, in-process."""
    from lunar_cli.predictor import model_passes
    from lunar_cli.serve_engine import answer_photo, photo_and_frame

    start = time.perf_counter()
    photo, frame = photo_and_frame(model, body, "bench.png", 16_000_000)
    passes = [p[0] for p in model_passes(model, frame[None], tta=False)]
    answer_photo(model, photo, passes, answer="rgb", name="bench.png", hazard_margin=15, maps=False, started=start)
    return time.perf_counter() - start


def forward_rates(photo_body: bytes, rounds: int) -> list[str]:
    """Return the markdown rows of table (c): bare forward images/s by batch size, fp32 and default precision."""
    from lunar_cli.models.builtin import builtin_checkpoint
    from lunar_cli.predictor import load_predictor
    from lunar_cli.serve_engine import photo_and_frame

    rows = []
    for amp in (False, None):
        model = load_predictor(builtin_checkpoint(), "cpu", amp)
        frame = photo_and_frame(model, photo_body, "bench.png", 16_000_000)[1]
        rates: dict[int, list[float]] = {b: [] for b in BATCHES}
        model.logits(np.stack([frame] * 2))  # warm-up
        for _ in range(rounds):
            for batch in BATCHES:
                frames = np.stack([frame] * batch)
                start = time.perf_counter()
                for _ in range(max(BATCHES) // batch):
                    model.logits(frames)
                rates[batch].append(max(BATCHES) / (time.perf_counter() - start))
        best = statistics.median(rates[1])
        rows.append(f"| {model.runs_on()['precision']} | " + " | ".join(
            f"{median_range(rates[b])} ({statistics.median(rates[b]) / best:.2f}x)" for b in BATCHES) + " |")  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def clients_rate(url: str, bodies: list[bytes]) -> float:
    """Return images/s with CLIENTS clients sending their share of the photos, each one request after another."""
    shares = [bodies[i::CLIENTS] for i in range(CLIENTS)]
    start = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(lambda share: [post(url, b) for b in share], shares))
    return len(bodies) / (time.perf_counter() - start)


def measure(work: Path, photos: list[Path], rounds: int) -> tuple[list[str], list[str], str]:
    """Return the markdown rows of tables (a) and (b), and a sentence on which server was fastest."""
    from lunar_cli.models.builtin import builtin_checkpoint
    from lunar_cli.predictor import load_predictor

    model = load_predictor(builtin_checkpoint(), "cpu")
    bodies = [p.read_bytes() for p in photos]
    servers = {name: start_server(extra) for name, extra in SERVERS.items()}
    try:
        for _, url in servers.values():
            clients_rate(url, bodies[: 2 * CLIENTS])  # warm-up: the model's first passes, the allocator
        [engine_time(model, b) for b in bodies[:4]]
        predict_rate = lambda out: lunar_rate("builtin", photos[0].parent, out, None, PREDICT_BATCH, "cpu")  # noqa: E731
        predict_rate(work / "warm")
        engine, served = [], []
        rates: dict[str, list[float]] = {name: [] for name in ["lunar predict", *SERVERS]}
        for _ in range(rounds):
            for body in bodies:  # frame by frame, in turn, so that both see the same load on a shared machine
                engine.append(engine_time(model, body))
                served.append(post(servers["serve"][1], body))
            rates["lunar predict"].append(predict_rate(work / "out"))
            for name, (_, url) in servers.items():
                rates[name].append(clients_rate(url, bodies))
            print({k: round(statistics.median(v), 2) for k, v in rates.items()}, flush=True)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait()
    ratio = statistics.median(served) / statistics.median(engine)
    latency = [
        f"| engine: decode + model + encode, in-process | {median_range(engine)} |",
        f"| `POST /predict` (HTTP, PNG in, PNG mask out) | {median_range(served)} |",
        f"| server / engine | **{ratio:.2f}x** |",
    ]
    base = statistics.median(rates["lunar predict"])
    throughput = [f"| {name if name == 'lunar predict' else f'lunar {name}, {CLIENTS} clients'} | {median_range(r)} | "
                  f"**{statistics.median(r) / base:.2f}x** |" for name, r in rates.items()]  # fmt: skip
    fastest = max(SERVERS, key=lambda name: statistics.median(rates[name]))
    verdict = (f"Fastest with {CLIENTS} clients here: `lunar {fastest}`, "
               f"{statistics.median(rates[fastest]) / base:.2f}x the images/s of `lunar predict` on the folder; "
               f"the server as it starts: {statistics.median(rates['serve']) / base:.2f}x; "
               f"its latency against the engine: {ratio:.2f}x.")  # fmt: skip
    return latency, throughput, verdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=24, help="rendered 720x480 photos per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        photos = make_photos(work / "photos", args.photos)
        forward = forward_rates(photos[0].read_bytes(), args.rounds + 2)
        latency, throughput, verdict = measure(work, photos, args.rounds)
    load = f"{min(load_before, os.getloadavg()[0]):.0f}-{max(load_before, os.getloadavg()[0]):.0f}"
    text = "\n".join([
        f"## Serving: lunar serve against the engine and lunar predict ({date.today().isoformat()})", "",
        f"Machine: {machine()}. The built-in model ({builtin_description()}) in its default precision, "
        f"rendered 720x480 PNGs, {args.photos} photos a round, {args.rounds} rounds, alternating after a warm-up; "
        f"medians (min-max); load average {load} at the start and end (other jobs on the same cores). "
        "Command: `python bench/bench_serve.py --write`.", "",
        "One frame, seconds (many sequential requests, warm server):", "",
        "| what | seconds |", "| --- | ---: |", *latency, "",
        f"Throughput, images/s ({CLIENTS} clients at once, each sending its share one request after another):", "",
        "| what | images/s | against lunar predict |", "| --- | ---: | ---: |", *throughput, "",
        f"The bare forward pass on one 720x480 frame, images/s by batch size (against batch 1), {args.rounds + 2} rounds:",
        "", "| precision | " + " | ".join(f"batch {b}" for b in BATCHES) + " |",
        "| --- |" + " ---: |" * len(BATCHES), *forward, "",
        verdict,
    ])  # fmt: skip
    print(text)
    if args.write:
        update_section(REPO / "bench" / "RESULTS.md", "## Serving:", text)


if __name__ == "__main__":
    main()
