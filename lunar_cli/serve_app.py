"""The HTTP side of ``lunar serve``: a Starlette app serving the web page, POST /predict, GET /health and GET /model.

Starlette and python-multipart are the optional ``[serve]`` extra: this module is imported
only when a server starts (``serve.serve_command``), never by ``lunar --help``. Requests
are read into memory with their size bounded as they arrive (``serve.max_upload_mb``),
a multipart form is parsed in memory (Starlette's own form parser would spool files over
1 MB to disk), and every refusal is a 4xx JSON ``{"error": "<one line>", "status": N}``;
the work on pixels runs in threads (``serve_engine``), the model in its one thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from lunar_cli.config import ServeConfig
from lunar_cli.console import LunarError, first_line, json_text, warn
from lunar_cli.predictor import Predictor
from lunar_cli.serve_engine import ANSWERS, FrameBatcher, UploadError, answer_photo, model_card, photo_and_frame, plural

PAGE = Path(__file__).with_name("serve_page.html")
DRAIN_SECONDS = 5.0  # how long the rest of a refused, oversized body is read and dropped
RAW_NAME = "upload"  # what a raw-body upload is called in messages and its record (a form's file keeps its own name)
YES, NO = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")
# The page's own script and styles, data: and blob: pictures; nothing from elsewhere.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'unsafe-inline'; "
                               "script-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
}  # fmt: skip


@dataclass
class Service:
    """What the server holds while it runs: the one loaded model and its batcher, its settings, its counts."""
    model: Predictor
    path: Path
    how: str  # how the model was chosen (model_files.find_model)
    settings: ServeConfig
    tta: bool
    hazard_margin: int
    batcher: FrameBatcher
    started: float = field(default_factory=time.monotonic)
    served: int = 0  # photos answered
    refused: int = 0  # requests answered with an error
    pending: int = 0  # /predict requests in progress


def json_response(payload: Any, status: int = 200) -> Response:
    """Return ``payload`` as strictly valid JSON (never NaN)."""
    return Response(json_text(payload), status_code=status, media_type="application/json")


def error_response(message: str, status: int) -> Response:
    """Return the one JSON shape of every refusal."""
    return json_response({"error": message, "status": status}, status)


async def read_body(request: Request, limit: int) -> bytes:
    """Return the request body, refusing (413) one over ``limit`` bytes without holding more than that.

    The rest of a refused body is read and dropped (for ``DRAIN_SECONDS`` at most), so a
    client that sends it all before reading (urllib, requests) hears the 413 rather than
    a reset connection; one that asked ``Expect: 100-continue`` (curl) is answered at once.
    """
    declared = request.headers.get("content-length", "")
    too_big = declared.isdigit() and int(declared) > limit
    size = f"{int(declared) / 1e6:.1f} MB, " if too_big else ""
    refusal = UploadError(f"the upload is {size}over this server's limit of {limit / 1e6:g} MB "
                          "(serve.max_upload_mb); send a smaller image", 413)  # fmt: skip
    if too_big and request.headers.get("expect", "").lower() == "100-continue":
        raise refusal
    body, deadline = bytearray(), None
    async for chunk in request.stream():
        if not too_big:
            body += chunk
            too_big = len(body) > limit
        if too_big:
            body.clear()
            deadline = deadline or time.monotonic() + DRAIN_SECONDS
            if time.monotonic() > deadline:
                break
    if too_big:
        raise refusal
    return bytes(body)


def form_file(body: bytes, content_type: str) -> tuple[bytes, str]:
    """Return (bytes, file name) of the one file in a multipart/form-data body, parsed in memory."""
    boundary = parse_options_header(content_type)[1].get(b"boundary")
    if not boundary:
        raise UploadError("multipart/form-data without a boundary; let the client build the form "
                          "(curl -F image=@photo.png)")
    parts: list[dict[str, Any]] = []
    header = [bytearray(), bytearray()]

    def header_end() -> None:
        parts[-1]["headers"][bytes(header[0]).lower()] = bytes(header[1])
        header[0].clear(), header[1].clear()

    callbacks = {
        "on_part_begin": lambda: parts.append({"headers": {}, "data": bytearray()}),
        "on_header_field": lambda data, start, end: header[0].extend(data[start:end]),
        "on_header_value": lambda data, start, end: header[1].extend(data[start:end]),
        "on_header_end": header_end,
        "on_part_data": lambda data, start, end: parts[-1]["data"].extend(data[start:end]),
    }  # fmt: skip
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise UploadError(f"damaged multipart form ({first_line(exc)}); send the image again") from exc
    files = []
    for part in parts:
        disposition = parse_options_header(part["headers"].get(b"content-disposition"))[1]
        if b"filename" in disposition:
            name = disposition[b"filename"].decode("utf-8", "replace").replace("\\", "/").rsplit("/", 1)[-1]
            name = "".join(c if c.isprintable() else "?" for c in name[:200])  # messages stay one line
            files.append((bytes(part["data"]), name or RAW_NAME))
    if len(files) != 1:
        raise UploadError(f"a form with {len(files)} files; send one image per request (curl -F image=@photo.png)")
    return files[0]


def upload_of(body: bytes, content_type: str) -> tuple[bytes, str]:
    """Return (image bytes, name) from a body: the raw image, or a multipart form's one file; 415 for other types."""
    kind = content_type.split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        return form_file(body, content_type)
    if kind in ("", "application/octet-stream") or kind.startswith("image/"):
        return body, RAW_NAME
    raise UploadError(f"Content-Type {kind}: send the image as the body with Content-Type image/png, image/jpeg or "
                      "application/octet-stream, or as a multipart form (curl -F image=@photo.png)", 415)  # fmt: skip


def query_options(request: Request) -> tuple[str, bool]:
    """Return (what to answer, whether a record carries its maps) from ?format= (or Accept: JSON) and ?maps=."""
    wants_json = "application/json" in request.headers.get("accept", "")
    answer = request.query_params.get("format", "json" if wants_json else "rgb").lower()
    if answer not in ANSWERS:
        raise UploadError(f"format={answer}: choose one of {', '.join(ANSWERS)}")
    maps = request.query_params.get("maps", "").lower()
    if maps not in YES + NO:
        raise UploadError(f"maps={maps}: give true or false")
    return answer, maps in YES


def answer_upload(service: Service, data: bytes, name: str, answer: str, maps: bool) -> tuple[bytes, str]:
    """Return (body, media type) of the answer to one upload: decoded, run by the model thread, drawn."""
    started = time.perf_counter()
    photo, frame = photo_and_frame(service.model, data, name, service.settings.max_pixels)
    try:
        passes = service.batcher.submit(frame).result()
    except Exception as exc:  # noqa: BLE001 - the model failed on this frame: said, and the server goes on
        raise UploadError(f"{name}: the model could not run on it ({first_line(exc)})", 500) from exc
    return answer_photo(service.model, photo, passes, answer=answer, name=name, hazard_margin=service.hazard_margin,
                        maps=maps, started=started)  # fmt: skip


async def predict(request: Request) -> Response:
    """POST /predict: one image (raw body or multipart form) in; its mask, another picture or its record out."""
    service: Service = request.app.state.service
    if service.pending >= service.settings.max_pending:
        service.refused += 1
        busy = f"busy: {plural(service.pending, 'request')} in progress (serve.max_pending); retry shortly"
        return error_response(busy, 503)
    service.pending += 1
    try:
        answer, maps = query_options(request)
        body = await read_body(request, int(service.settings.max_upload_mb * 1e6))
        data, name = upload_of(body, request.headers.get("content-type", ""))
        # One worker thread decodes, waits for the model thread and draws: fewer hand-overs
        # between threads than going back to the event loop in between.
        content, media = await run_in_threadpool(answer_upload, service, data, name, answer, maps)
    except LunarError as exc:
        service.refused += 1
        return error_response(str(exc), getattr(exc, "status", 400))
    except ClientDisconnect:  # the client went away before its upload arrived: no one to answer
        service.refused += 1
        return error_response("the client went away before its upload arrived", 400)
    finally:
        service.pending -= 1
    service.served += 1
    return Response(content, media_type=media)


async def page(request: Request) -> Response:
    """GET /: the web page (one static file)."""
    return Response(request.app.state.page, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


async def health(request: Request) -> Response:
    """GET /health: the server is up; what it has done so far."""
    service: Service = request.app.state.service
    batcher = service.batcher
    return json_response({
        "status": "ok", "uptime_s": round(time.monotonic() - service.started, 1), "served": service.served,
        "refused": service.refused, "in_progress": service.pending, "passes": batcher.passes, "frames": batcher.frames,
    })  # fmt: skip


async def model(request: Request) -> Response:
    """GET /model: which model answers, its classes, precision and device, and this server's limits."""
    service: Service = request.app.state.service
    s = service.settings
    return json_response({**model_card(service.model, service.path, service.how), "tta": service.tta,
                          "hazard_margin": service.hazard_margin, "max_upload_mb": s.max_upload_mb,
                          "max_pixels": s.max_pixels, "batch_size": service.batcher.batch_size,
                          "batch_window_ms": s.batch_window_ms})  # fmt: skip


async def http_error(request: Request, exc: HTTPException) -> Response:
    """Unknown paths and methods, in the one JSON shape."""
    routes = "GET /, POST /predict, GET /health, GET /model"
    message = f"{request.method} {request.url.path}: {exc.detail}; this server has {routes}"
    return error_response(message, exc.status_code)


async def internal_error(request: Request, exc: Exception) -> Response:
    """A bug: one line on the server's stderr and a JSON 500 to the client; the server goes on."""
    message = f"{request.method} {request.url.path}: {type(exc).__name__}: {first_line(exc)} (a bug: please report it)"
    warn(message)
    return error_response(message, 500)


def make_app(service: Service) -> Starlette:
    """Return the app serving ``service``'s model."""
    routes = [Route("/", page, methods=["GET"]), Route("/predict", predict, methods=["POST"]),
              Route("/health", health, methods=["GET"]), Route("/model", model, methods=["GET"])]  # fmt: skip
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: internal_error})
    app.state.service = service
    app.state.page = PAGE.read_bytes()
    return app
