"""Nothing lunar reads can run code or write outside where it belongs.

- No unsafe deserialisation anywhere in the shipped code or the benchmarks: a scan of
  the source text for pickle, unsafe YAML, ``weights_only=False``, pickled numpy files,
  eval/exec, ``shell=True`` and ``extractall`` (the checkpoint and YAML payloads
  themselves are refused in tests/test_reliability.py).
- Zip extraction never writes outside its target, whatever the entry names.
- ``lunar fetch --models URL --checksum SHA256`` keeps nothing that does not match.
"""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
from pathlib import Path

import pytest

from lunar_cli.console import LunarError
from lunar_cli.data.archive import safe_extract_zip
from tests.test_fetch import http_server  # noqa: F401 - a fixture: a local HTTP server, no network

REPO = Path(__file__).resolve().parents[1]
SCANNED = sorted([*REPO.glob("lunar_cli/**/*.py"), *REPO.glob("bench/**/*.py")])

# (what is wrong, pattern) - each is unsafe wherever it appears, in code or in code kept in a string.
FORBIDDEN = [
    ("torch.load with weights_only=False", r"weights_only\s*=\s*False"),
    ("pickle loading", r"\b((?i:c?pickle)|dill|joblib|marshal|shelve)\.(load|loads|open)\b"),
    ("yaml.load without SafeLoader", r"\byaml\.load\((?![^)]*Loader\s*=\s*(yaml\.)?C?SafeLoader)"),
    ("yaml unsafe_load/full_load", r"\byaml\.(unsafe_load|full_load|load_all)\b"),
    ("numpy load with allow_pickle=True", r"allow_pickle\s*=\s*True"),
    ("eval/exec of text", r"(?<![.\w])(eval|exec)\("),
    ("shell=True", r"shell\s*=\s*True"),
    ("extractall (use archive.safe_extract_zip)", r"\.extractall\("),
]


def unsafe_uses(text: str) -> list[str]:
    """Return '<what>: <line>' for every unsafe use in Python source ``text`` (strings included)."""
    found = []
    for what, pattern in FORBIDDEN:
        for match in re.finditer(pattern, text):
            found.append(f"{what}: {text[: match.start()].count(chr(10)) + 1}")
    for match in re.finditer(r"\btorch\.load\(", text):  # every torch.load must say weights_only=True
        depth, end = 1, match.end()
        while depth and end < len(text):
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            end += 1
        if not re.search(r"weights_only\s*=\s*True", text[match.end() : end]):
            found.append(f"torch.load without weights_only=True: {text[: match.start()].count(chr(10)) + 1}")
    return found


def test_the_scan_finds_each_unsafe_pattern():
    bad = {
        "torch.load(path)": 1, "torch.load(\n  path,\n  map_location='cpu')": 1,
        "torch.load(p, weights_only=False)": 2, "pickle.loads(blob)": 1, "cPickle.load(f)": 1,
        "yaml.load(text)": 1, "yaml.load(text, Loader=yaml.Loader)": 1, "yaml.unsafe_load(t)": 1,
        "np.load(f, allow_pickle=True)": 1, "eval(expr)": 1, "subprocess.run(c, shell=True)": 1,
        "zf.extractall(target)": 1,
    }  # fmt: skip
    for code, count in bad.items():
        assert len(unsafe_uses(code)) == count, code
    good = ["torch.load(p, map_location='cpu', weights_only=True)", "yaml.safe_load(t)", "model.eval()",
            "yaml.load(t, Loader=yaml.SafeLoader)", "np.load(p, mmap_mode='r')", "json.loads(s)"]  # fmt: skip
    assert [c for c in good if unsafe_uses(c)] == []


def test_no_unsafe_deserialisation_in_lunar_or_the_benchmarks():
    assert len(SCANNED) > 20 and REPO / "lunar_cli" / "models" / "checkpoint.py" in SCANNED
    found = [f"{p.relative_to(REPO)}:{hit}" for p in SCANNED for hit in unsafe_uses(p.read_text(encoding="utf-8"))]
    assert found == []


# --- archives --------------------------------------------------------------------------------

NASTY = [
    "../escaped.png", "images/../../escaped.png", "./../escaped.png", "images//..//..//escaped.png",
    "images\\..\\..\\escaped.png", "/tmp/lunar-escaped.png", "C:/escaped.png", "c:\\escaped.png",
    "\\\\server\\share\\escaped.png", "images/render/../../../escaped.png",
]  # fmt: skip


def tree(root: Path) -> set[str]:
    """Return every path under root, as text."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("entry", NASTY)
def test_zip_extraction_never_writes_outside_the_target(tmp_path, entry):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("images/render/render0001.png", b"fine")
        zf.writestr(entry, b"escaped")
    target = tmp_path / "deep" / "target"
    before = tree(tmp_path)
    try:
        safe_extract_zip(archive, target)
    except LunarError as exc:
        assert "refusing entry" in str(exc) and "\n" not in str(exc)
    outside = {p for p in tree(tmp_path) - before if not p.startswith(str(Path("deep") / "target"))}
    assert outside == {str(Path("deep"))} or outside == set(), outside
    assert not Path("/tmp/lunar-escaped.png").exists()
    assert not any("escaped" in p for p in tree(tmp_path))  # refused before anything was written


def test_every_extraction_goes_through_the_safe_one():
    callers = [p.relative_to(REPO).as_posix() for p in SCANNED if "ZipFile(" in p.read_text(encoding="utf-8")]
    assert callers == ["lunar_cli/data/archive.py"]
    text = (REPO / "lunar_cli" / "data" / "archive.py").read_text(encoding="utf-8")
    assert text.count("zf.open(") == 1 and ".extract(" not in text  # the one read, inside safe_extract_zip


# --- downloaded checkpoints -------------------------------------------------------------------


def test_downloaded_models_are_kept_only_when_the_checksum_matches(tmp_path, http_server, cli):  # noqa: F811
    www, base = http_server
    blob = os.urandom(4096)
    (www / "unet_custom.pt").write_bytes(blob)
    right = hashlib.sha256(blob).hexdigest()
    models = tmp_path / "models"
    url = f"{base}/unet_custom.pt"

    wrong = cli("fetch", "--models", url, "--models-dir", models, "--checksum", "0" * 64)
    assert wrong.code == 1 and wrong.err.splitlines()[-1].startswith("error:"), wrong.err
    assert wrong.err.count("error:") == 1 and "Traceback" not in wrong.err, wrong.err
    assert f"has sha256 {right}, expected {'0' * 64}" in wrong.err and "nothing was kept" in wrong.err
    assert not models.exists() or [p.name for p in models.iterdir()] == []

    garbled = cli("fetch", "--models", url, "--models-dir", models, "--checksum", "abc")
    assert garbled.code == 1 and "64 hex digits" in garbled.err

    ok = cli("fetch", "--models", url, "--models-dir", models, "--checksum", f"sha256:{right.upper()}", "--json")
    assert ok.code == 0, ok.err
    assert ok.json()["models"] == [str(models / "unet_custom.pt")]
    assert (models / "unet_custom.pt").read_bytes() == blob
