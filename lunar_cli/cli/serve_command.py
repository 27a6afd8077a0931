"""``lunar serve``: the web page and HTTP API on one loaded model (registered in ``lunar_cli.cli``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lunar_cli.cli.app import AmpOpt, ChannelsLastOpt, ConfigOpt, DeviceOpt, RunsDirOpt, TtaOpt, default_of, flags
from lunar_cli.config import command_config, limit_text


def serve(
    model: Annotated[
        Optional[Path],
        typer.Option("--model", "-m",
                     help="Checkpoint, run folder, exported .onnx or builtin (default: newest best.pt under runs/)."),
    ] = None,
    host: Annotated[
        Optional[str],
        typer.Option(help=f"Address to listen on; 0.0.0.0: every network (no auth). {default_of('serve.host')}"),
    ] = None,
    port: Annotated[Optional[int], typer.Option(help=f"TCP port; 0: any free one. {default_of('serve.port')}")] = None,
    max_upload_mb: Annotated[
        Optional[float], typer.Option(help=f"Largest request body, MB. {default_of('serve.max_upload_mb')}")
    ] = None,
    max_pixels: Annotated[
        Optional[int], typer.Option(help=f"Largest image, pixels (from its header). {default_of('serve.max_pixels')}")
    ] = None,
    batch_size: Annotated[
        Optional[int],
        typer.Option(help=f"Most frames in one forward pass. [default: 4 on a CPU, 8 on a GPU; {limit_text('serve.batch_size')}]"),
    ] = None,
    batch_window_ms: Annotated[
        Optional[float],
        typer.Option(help=f"How long a frame waits for others to batch with. {default_of('serve.batch_window_ms')}"),
    ] = None,
    max_pending: Annotated[
        Optional[int],
        typer.Option(help=f"Requests in progress at once (more: HTTP 503). {default_of('serve.max_pending')}"),
    ] = None,
    hazard_margin: Annotated[
        Optional[int], typer.Option(help=f"Clearance around rocks, pixels. {default_of('predict.hazard_margin')}")
    ] = None,
    tta: TtaOpt = None,
    device: DeviceOpt = None,
    amp: AmpOpt = None,
    channels_last: ChannelsLastOpt = None,
    runs_dir: RunsDirOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Serve a model over HTTP, with a web page: lunar serve, then open http://127.0.0.1:8000/."""
    given = flags(locals(), "model")
    from lunar_cli.serve import serve_command  # NumPy and OpenCV (torch only for a checkpoint) load here

    serve_command(command_config("serve", config, given), model)
