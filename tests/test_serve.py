"""lunar serve as a ground station meets it: a real server on an ephemeral port, real HTTP requests, a real tiny model.

The server runs as ``python -m lunar_cli serve --port 0`` in a subprocess (what a user
starts), is called with urllib (no client library of ours), and its answers are checked
against what ``lunar predict`` writes for the same photo with the same model. The web
page is loaded in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``
packages) driven by Selenium; that test skips, saying why, where they are not installed.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest

from lunar_cli.classes import PALETTE, decode_mask, read_image_rgb
from tests.test_hostile import png_claiming
from tests.test_inference import calibrated
from tests.test_interrupts import ENV
from tests.test_predict import make_photos, predict, save_model

HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # straight to 127.0.0.1, whatever the proxy
LIMIT_MB = 1.0  # the test server's upload limit


@dataclass
class Server:
    """A running ``lunar serve`` subprocess: its URL and what it has said on stderr so far."""
    proc: subprocess.Popen
    url: str = ""
    lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    def said(self) -> str:
        return "".join(self.lines)


def start_server(*args, cwd: Path | None = None, env: dict | None = None, wait: bool = True) -> Server:
    """Start ``lunar serve --port 0 ARGS``; with ``wait``, return once it says where it serves."""
    cmd = [sys.executable, "-m", "lunar_cli", "serve", "--port", "0", "--device", "cpu", *map(str, args)]
    proc = subprocess.Popen(cmd, env=env or ENV, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    server = Server(proc)
    server.reader = threading.Thread(target=lambda: server.lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    server.reader.start()
    deadline = time.monotonic() + 120
    while wait and not server.url:
        found = re.search(r" at (http://\S+/): ", server.said())
        if found:
            server.url = found.group(1)
        assert proc.poll() is None, f"lunar serve ended (exit {proc.returncode}): {server.said()}"
        assert time.monotonic() < deadline, f"lunar serve did not start: {server.said()}"
        time.sleep(0.02)
    return server


def stop(server: Server) -> int:
    """Press Ctrl-C on the server; return its exit code once it has ended and all it said is read."""
    server.proc.send_signal(signal.SIGINT)
    try:
        code = server.proc.wait(timeout=60)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    server.reader.join(timeout=10)
    return code


def request(url: str, body: bytes | None = None, content_type: str | None = "image/png", headers=None):
    """Return (status, Content-Type, body bytes) of a GET (no body) or POST."""
    sent = {**({"Content-Type": content_type} if content_type and body is not None else {}), **(headers or {})}
    req = urllib.request.Request(url, data=body, method="GET" if body is None else "POST", headers=sent)
    try:
        with HTTP.open(req, timeout=120) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read()
    except urllib.error.HTTPError as answer:
        return answer.code, answer.headers["Content-Type"], answer.read()


def strict_json(data: bytes):
    """Parse JSON that must hold no NaN or Infinity."""
    return json.loads(data, parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))


def form(*files: tuple[str, bytes]) -> tuple[bytes, str]:
    """Return (body, Content-Type) of a multipart form holding ``files`` (name, bytes), as a browser sends it."""
    boundary = "lunar-test-boundary-7MA4YWxkTrZu0gW"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
             f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n" for name, data in files]  # fmt: skip
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def png_of(array: np.ndarray) -> np.ndarray:
    """Return PNG bytes decoded to an RGB (or single-channel) array."""
    img = cv2.imdecode(np.frombuffer(array, np.uint8), cv2.IMREAD_UNCHANGED)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if img.ndim == 3 else img


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A tiny untrained, calibrated custom U-Net fed at scale 1 (photos run whole)."""
    return calibrated(save_model(tmp_path_factory.mktemp("model") / "best.pt", square=None, base_width=4, depth=2))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    return make_photos(tmp_path_factory.mktemp("photos"), 3, size=(60, 84))


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    """One server for the module: the tiny model in fp32, a 1 MB upload limit, its temp folder and cwd watched."""
    home = tmp_path_factory.mktemp("serve-home")
    (home / "tmp").mkdir()
    running = start_server("--model", tiny, "--no-amp", "--max-upload-mb", LIMIT_MB, cwd=home,
                           env={**ENV, "TMPDIR": str(home / "tmp")})  # fmt: skip
    running.home = home
    yield running
    stop(running)


def test_the_mask_and_the_record_are_what_predict_gives(server, tiny, photos, tmp_path):
    data = photos[0].read_bytes()
    status, kind, body = request(server.url + "predict", data)
    assert (status, kind) == (200, "image/png")
    done = predict([photos[0]], tmp_path / "out", tiny, amp=False, hazard=True, uncertainty=True)
    (expected,) = done["records"]
    assert np.array_equal(png_of(body), read_image_rgb(Path(expected["output"][0])))

    status, kind, body = request(server.url + "predict?format=json", data)
    assert (status, kind) == (200, "application/json")
    record = strict_json(body)
    assert set(record) == set(expected)  # the same shape as a predict --json --hazard --uncertainty record
    assert record["output"] == [] and record["input"] == "upload" and (record["width"], record["height"]) == (84, 60)
    for key in ("class_fractions", "hazard", "uncertainty", "out_of_distribution", "device", "precision", "layout"):
        assert record[key] == expected[key], key


def test_a_form_upload_keeps_its_name_and_every_picture_is_at_the_photos_size(server, photos):
    body, kind = form(("crater rim.png", photos[1].read_bytes()))
    status, _, answer = request(server.url + "predict?format=json&maps=true", body, kind)
    record = strict_json(answer)
    assert status == 200 and record["input"] == "crater rim.png"
    assert set(record["maps"]) == {"mask", "overlay", "hazard", "uncertainty"}
    pictures = {k: png_of(base64.b64decode(v.split(",", 1)[1])) for k, v in record["maps"].items()}
    assert all(p.shape[:2] == (60, 84) for p in pictures.values())
    assert {tuple(c) for c in pictures["mask"].reshape(-1, 3)} <= {tuple(c) for c in PALETTE.tolist()}
    assert pictures["uncertainty"].ndim == 2
    for answer_kind, channels in (("index", 2), ("overlay", 3), ("hazard", 3), ("uncertainty", 2)):
        status, kind, png = request(server.url + f"predict?format={answer_kind}", photos[1].read_bytes())
        assert (status, kind) == (200, "image/png")
        assert png_of(png).ndim == channels and png_of(png).shape[:2] == (60, 84)
    status, kind, png = request(server.url + "predict?format=index", photos[1].read_bytes())
    assert np.array_equal(png_of(png), decode_mask(pictures["mask"])[0])


def test_health_and_model_say_what_runs(server, tiny):
    status, kind, body = request(server.url + "health")
    health = strict_json(body)
    assert (status, kind, health["status"]) == (200, "application/json", "ok")
    model = strict_json(request(server.url + "model")[2])
    assert model["model"] == str(tiny) and model["backbone"] == "custom" and model["frame_size"] == "scale 1"
    assert [c["name"] for c in model["classes"]] == ["ground", "sky", "small_rocks", "large_rocks"]
    assert model["classes"][1]["rgb"] == [255, 0, 0]
    assert (model["device"], model["precision"], model["ood_threshold"]) == ("cpu", "fp32", 0.5)
    assert model["max_upload_mb"] == LIMIT_MB


def damaged_in_the_middle(data: bytes) -> bytes:
    """Return a PNG with one byte of its pixel data flipped (its chunk checksum no longer matches)."""
    middle = bytearray(data)
    middle[len(data) // 2] ^= 0xFF
    return bytes(middle)


BAD_UPLOADS = {  # name -> (body or a maker of it from a good PNG, Content-Type, HTTP status, what the error says)
    "non-image": (b"hello, this is text\n", "image/png", 400, "upload: not a PNG, JPEG, TIFF or BMP image"),
    "truncated PNG": (lambda good: good[: len(good) // 2], "image/png", 400, "upload: truncated PNG"),
    "PNG damaged in the middle": (damaged_in_the_middle, "image/png", 400, "upload: damaged PNG (checksum error"),
    "30000x30000 header": (None, "image/png", 413, "upload: 30000x30000 pixels (900.0 megapixels) is over"),
    "empty body": (b"", "image/png", 400, "upload: empty"),
    "wrong content type": (lambda good: good, "text/plain", 415, "Content-Type text/plain: send the image"),
    "form without a file": (b"--b\r\nContent-Disposition: form-data; name=x\r\n\r\n1\r\n--b--\r\n",
                            "multipart/form-data; boundary=b", 400, "a form with 0 files"),
    "two files in a form": ("two", None, 400, "a form with 2 files; send one image per request"),
    "truncated PNG in a form": ("form-truncated", None, 400, "shot0.png: truncated PNG"),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_a_bad_upload_is_a_4xx_json_line_and_the_server_goes_on(server, photos, tmp_path, case):
    body, kind, status, says = BAD_UPLOADS[case]
    good = photos[0].read_bytes()
    if case == "30000x30000 header":
        body = png_claiming(tmp_path / "bomb.png", 30000, 30000).read_bytes()
    elif body == "two":
        body, kind = form(("a.png", good), ("b.png", good))
    elif body == "form-truncated":
        body, kind = form(("shot0.png", good[: len(good) // 2]))
    elif callable(body):
        body = body(good)
    got, got_kind, answer = request(server.url + "predict", body, kind)
    error = strict_json(answer)
    assert (got, got_kind, error["status"]) == (status, "application/json", status), answer
    assert error["error"].startswith(says) and "\n" not in error["error"], error
    assert request(server.url + "predict", good)[0] == 200  # the next photo is answered
    assert server.proc.poll() is None


def test_unknown_paths_methods_and_options_are_json_errors(server, photos):
    good = photos[0].read_bytes()
    for url, body, status, says in (
        ("nowhere", None, 404, "GET /nowhere: Not Found; this server has GET /, POST /predict"),
        ("predict", None, 405, "GET /predict: Method Not Allowed"),
        ("predict?format=jpeg", good, 400, "format=jpeg: choose one of rgb, index, overlay, hazard, uncertainty, json"),
        ("predict?format=json&maps=perhaps", good, 400, "maps=perhaps: give true or false"),
    ):  # fmt: skip
        got, kind, answer = request(server.url + url, body)
        assert (got, kind) == (status, "application/json") and strict_json(answer)["error"].startswith(says), answer


def test_uploads_over_the_limit_are_refused_and_no_upload_is_ever_written_to_disk(server, photos):
    import http.client

    host, port = server.url.split("//")[1].rstrip("/").split(":")
    # A big but allowed upload (0.9 MB of noise: Starlette's own form parser would spool it to a file).
    rng = np.random.default_rng(0)
    noise = cv2.imencode(".png", rng.integers(0, 256, (300, 1000, 3), dtype=np.uint8))[1].tobytes()
    assert 0.5e6 < len(noise) < LIMIT_MB * 1e6
    body, kind = form(("noise.png", noise))
    status, _, answer = request(server.url + "predict?format=json", body, kind)
    assert status == 200 and strict_json(answer)["width"] == 1000
    assert list((server.home / "tmp").iterdir()) == [] and sorted(p.name for p in server.home.iterdir()) == ["tmp"]

    # Declared too big: refused from the header, before the body is sent (curl's Expect: 100-continue).
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.putrequest("POST", "/predict")
    for name, value in (("Content-Type", "image/png"), ("Content-Length", str(int(5e6))), ("Expect", "100-continue")):
        conn.putheader(name, value)
    conn.endheaders()
    answer = conn.getresponse()
    error = strict_json(answer.read())
    assert answer.status == 413 and error["error"].startswith("the upload is 5.0 MB, over this server's limit of 1 MB")
    conn.close()

    # Declared too big by a client that sends it all before reading (urllib): the rest is read and dropped.
    status, _, answer = request(server.url + "predict", b"\0" * int(1.5e6))
    assert status == 413 and strict_json(answer)["error"].startswith("the upload is 1.5 MB, over")

    # Sent without a length (chunked): refused once it grows over the limit.
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.putrequest("POST", "/predict")
    conn.putheader("Content-Type", "image/png")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    piece = b"\0" * 100_000
    for _ in range(15):
        conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
    conn.send(b"0\r\n\r\n")
    answer = conn.getresponse()
    assert answer.status == 413 and strict_json(answer.read())["error"].startswith("the upload is over this server's")
    conn.close()
    assert request(server.url + "predict", photos[0].read_bytes())[0] == 200


def test_concurrent_requests_each_get_their_own_photos_answer(server, tiny, photos, tmp_path):
    expected = {p.name: png_of(request(server.url + "predict", p.read_bytes())[2]) for p in photos}
    before = strict_json(request(server.url + "health")[2])
    jobs = [photos[i % len(photos)] for i in range(12)]
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda p: request(server.url + "predict", p.read_bytes()), jobs))
    assert all(status == 200 for status, _, _ in answers)
    for path, (_, _, body) in zip(jobs, answers):
        assert np.array_equal(png_of(body), expected[path.name]), path.name
    after = strict_json(request(server.url + "health")[2])
    assert after["frames"] - before["frames"] == 12 and after["passes"] - before["passes"] <= 12


def test_frames_submitted_together_run_as_one_pass_per_size(tiny):
    from lunar_cli.predictor import load_predictor, model_passes
    from lunar_cli.serve_engine import FrameBatcher

    model = load_predictor(tiny, "cpu", amp=False)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, size, dtype=np.uint8) for size in [(32, 48, 3)] * 3 + [(40, 40, 3)]]
    batcher = FrameBatcher(model, tta=True, batch_size=8, window_s=0.5)
    try:
        futures = [batcher.submit(f) for f in frames]
        results = [f.result(timeout=60) for f in futures]
    finally:
        batcher.close()
    assert (batcher.passes, batcher.frames) == (2, 4)  # three of one size together, the fourth alone
    for frame, passes in zip(frames, results):
        alone = model_passes(model, frame[None], tta=True)
        assert len(passes) == 2 and all(np.allclose(p, a[0], atol=1e-5) for p, a in zip(passes, alone))


def test_a_port_in_use_is_one_line_and_the_first_server_goes_on(server, tiny, photos):
    port = server.url.rstrip("/").rsplit(":", 1)[1]
    second = subprocess.run([sys.executable, "-m", "lunar_cli", "serve", "--model", tiny, "--port", port],
                            env=ENV, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert second.returncode == 1
    assert second.stderr.strip().splitlines() == [f"error: 127.0.0.1:{port}: port in use; choose another --port"]
    assert request(server.url + "predict", photos[0].read_bytes())[0] == 200


def test_an_onnx_model_serves_the_same_masks_a_busy_server_says_503_and_ctrl_c_stops_cleanly(tiny, photos, tmp_path):
    from lunar_cli.export import export_model

    onnx = tmp_path / "tiny.onnx"
    export_model(tiny, onnx, "onnx")
    # One request at a time, each held a second for company: a second request meanwhile is refused.
    running = start_server("--model", onnx, "--max-pending", 1, "--batch-size", 2, "--batch-window-ms", 1000)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(request, running.url + "predict", photos[2].read_bytes())
        time.sleep(0.3)
        busy, _, refusal = request(running.url + "predict", photos[2].read_bytes())
        status, _, body = first.result()
    model = strict_json(request(running.url + "model")[2])
    code = stop(running)
    assert busy == 503
    assert strict_json(refusal)["error"] == "busy: 1 request in progress (serve.max_pending); retry shortly"
    assert (status, model["layout"], model["precision"]) == (200, "onnxruntime", "fp32")
    done = predict([photos[2]], tmp_path / "out", onnx)
    assert np.array_equal(png_of(body), read_image_rgb(Path(done["records"][0]["output"][0])))
    lines = running.said().strip().splitlines()
    assert code == 130 and lines[-1] == "stopped: 1 photo answered, 1 request refused", lines
    assert "Traceback" not in running.said()


def test_without_the_serve_extra_it_says_what_to_install(cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if it were not installed
    result = cli("serve", "--model", "builtin")
    assert result.code == 1
    assert result.err.strip().splitlines() == [
        "error: lunar serve needs the serve extra (uvicorn is not installed): pip install 'lunar-cli[serve]' "
        "(in a checkout: pip install -e '.[serve]')"
    ]


def test_help_loads_no_web_library():
    code = ("import sys; from lunar_cli.cli import run; run(['--help']); run(['serve', '--help']);"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('uvicorn', 'starlette', 'fastapi', 'python_multipart', 'anyio', 'torch')))")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=ENV)
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    assert "lunar serve" in proc.stdout or "--port" in proc.stdout


def browser():
    """Return a headless Chromium driven by Selenium, or skip saying what is missing."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("no browser: install Debian's chromium and chromium-driver (apt-get install chromium "
                    "chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"):  # fmt: skip
        options.add_argument(flag)
    return webdriver, options


def test_the_web_page_in_a_real_browser_shows_the_overlay_and_refuses_a_bad_file(server, photos, tmp_path):
    webdriver, options = browser()
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    try:
        driver.get(server.url)
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_element(By.ID, "model").text.startswith("model: custom U-Net"))
        driver.find_element(By.ID, "files").send_keys(str(photos[0]))
        card = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".card"))
        wait.until(lambda d: "done in" in card.find_element(By.CLASS_NAME, "status").text)
        for picture in ("photo", "overlay", "hazard", "uncertainty"):
            width = wait.until(lambda d: d.execute_script(
                "return arguments[0].naturalWidth", card.find_element(By.CLASS_NAME, picture)))  # fmt: skip
            assert width == 84, picture  # each picture decoded, at the photo's size
        shares = [row.text for row in card.find_elements(By.CSS_SELECTOR, ".shares tr")]
        assert len(shares) == 4 and shares[0].startswith("ground") and shares[0].endswith("%")
        link = card.find_element(By.CLASS_NAME, "download")
        assert link.get_attribute("download") == "shot0_mask.png"
        assert link.get_attribute("href").startswith("data:image/png;base64,")

        text = tmp_path / "notes.png"
        text.write_text("not a photo")
        driver.find_element(By.ID, "files").send_keys(str(text))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card")) == 2)
        failed = driver.find_elements(By.CSS_SELECTOR, ".card")[0]
        wait.until(lambda d: failed.find_element(By.CLASS_NAME, "status").text.startswith("error:"))
        assert "notes.png: not a PNG, JPEG, TIFF or BMP image" in failed.find_element(By.CLASS_NAME, "status").text
    finally:
        driver.quit()
