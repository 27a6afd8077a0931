"""lunar serve: one process that loads a model once and answers photos over HTTP, with a web page to try it.

Reads top to bottom: ``web_libraries`` (the optional ``[serve]`` extra, or one line saying
what to install) -> ``listen`` (the port, taken before the model loads, so a port in use
is said at once) -> ``model_files.find_model`` and ``predictor.load_predictor`` (PyTorch
checkpoint or ONNX file, as ``predict`` loads them) -> ``serve_engine.FrameBatcher`` ->
``serve_app.make_app`` run by uvicorn until Ctrl-C, which lets requests in progress
finish. Binds to 127.0.0.1 unless told otherwise: the API has no authentication.
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path
from typing import Any

import cv2

from lunar_cli.config import Config
from lunar_cli.console import LunarError, info
from lunar_cli.model_files import describe_choice, find_model
from lunar_cli.predictor import load_predictor
from lunar_cli.serve_engine import FrameBatcher, plural

EXTRA = "pip install 'lunar-cli[serve]' (in a checkout: pip install -e '.[serve]')"
WEB_LIBRARIES = ("uvicorn", "starlette", "python_multipart")
# Frames a pass takes at most when serve.batch_size is null (frames that queued while the model was
# busy; a lone request waits for nobody). On 2 CPU cores, with the built-in model, 4 clients got 1.28x
# the images/s of lunar predict at 4 a pass and 0.98x at 1 (bench/RESULTS.md, "Serving").
CPU_BATCH, GPU_BATCH = 4, 8


def web_libraries() -> tuple[Any, Any]:
    """Return (uvicorn, lunar_cli.serve_app), or raise the one line that says how to install the ``[serve]`` extra."""
    try:
        import uvicorn  # the optional [serve] extra: imported only when serving, so the base install stays lean

        from lunar_cli import serve_app  # Starlette and python-multipart, from the same extra
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in WEB_LIBRARIES:
            raise
        raise LunarError(f"lunar serve needs the serve extra ({exc.name} is not installed): {EXTRA}") from exc
    return uvicorn, serve_app


def address(host: str, port: int) -> str:
    """Return host:port as written in URLs ([::1]:8000 for IPv6)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen(host: str, port: int) -> socket.socket:
    """Return a socket listening on host:port (port 0: any free one), or raise a one-line LunarError saying why not."""
    where = address(host, port)
    try:
        family, kind, proto, _, bound_to = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                              flags=socket.AI_PASSIVE)[0]  # fmt: skip
    except socket.gaierror as exc:
        raise LunarError(f"--host {host}: not a known address ({exc.strerror}); use 127.0.0.1, or 0.0.0.0 for "
                         "every network") from exc  # fmt: skip
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart at once after a stop, as uvicorn does
    try:
        sock.bind(bound_to)
        sock.listen(2048)  # now, so that a second server on the port fails here; early clients wait in the backlog
    except OSError as exc:
        sock.close()
        why = {errno.EADDRINUSE: "port in use", errno.EACCES: "no permission for this port (below 1024 needs root)",
               errno.EADDRNOTAVAIL: "not an address of this machine"}.get(exc.errno or 0, exc.strerror)  # fmt: skip
        todo = "choose another --port"
        if exc.errno == errno.EADDRNOTAVAIL:
            todo = "use 127.0.0.1, or 0.0.0.0 for every network"
        raise LunarError(f"{where}: {why}; {todo}") from exc
    return sock


def serve_command(cfg: Config, model: Path | str | None) -> None:
    """Do what ``lunar serve`` was asked: serve ``model`` (default: the newest run's, else builtin) until Ctrl-C."""
    uvicorn, serve_app = web_libraries()
    settings = cfg.serve
    sock = listen(settings.host, settings.port)
    try:
        path, how = find_model(model, cfg.runs_dir)
        said = describe_choice(path, how, cfg.runs_dir)
        if said:
            info(said)
        loaded = load_predictor(path, cfg.device, cfg.amp, cfg.channels_last)
        runs = loaded.runs_on()
        batch = settings.batch_size or (CPU_BATCH if runs["device"] == "cpu" else GPU_BATCH)
        batcher = FrameBatcher(loaded, cfg.predict.tta, batch, settings.batch_window_ms / 1000)
        service = serve_app.Service(model=loaded, path=path, how=how, settings=settings, tta=cfg.predict.tta,
                                    hazard_margin=cfg.predict.hazard_margin, batcher=batcher)  # fmt: skip
        server = uvicorn.Server(uvicorn.Config(serve_app.make_app(service), log_config=None, access_log=False,
                                               lifespan="off", timeout_graceful_shutdown=10))  # fmt: skip
        url = f"http://{address(settings.host, sock.getsockname()[1])}/"
        info(f"serving {path} ({loaded.spec.backbone}, {runs['device']} {runs['precision']}) at {url}: the web page "
             "at /, POST /predict, GET /health, GET /model; Ctrl-C stops")  # fmt: skip
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)  # requests decode and draw in a thread each; OpenCV's own threads would oversubscribe
        try:
            server.run(sockets=[sock])
        finally:
            cv2.setNumThreads(threads)
            batcher.close()
            info(f"stopped: {plural(service.served, 'photo')} answered, {plural(service.refused, 'request')} refused")
    finally:
        sock.close()
