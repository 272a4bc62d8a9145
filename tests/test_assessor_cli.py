"""The `python -m assessor` contract: JSON lines, table, annotations, bad inputs, exit codes."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from assessor import benchdata
from assessor.degrade import degrade_region

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "assessor", *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        timeout=120,
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("imgs")
    photo = benchdata.load_photo("astronaut")
    noisy = degrade_region(photo, "noise", 5, (260, 40, 440, 200), np.random.default_rng(1)).image
    paths = {"noisy": d / "noisy.png", "clean": d / "clean.jpg", "same_name": d / "sub" / "noisy.png"}
    Image.fromarray(noisy).save(paths["noisy"])
    Image.fromarray(photo).save(paths["clean"], quality=95)
    paths["same_name"].parent.mkdir()
    Image.fromarray(photo[:200, :300]).convert("RGBA").save(paths["same_name"])
    paths["text"] = d / "notes.png"
    paths["text"].write_text("not an image")
    paths["tiny"] = d / "tiny.png"
    Image.new("RGB", (1, 1)).save(paths["tiny"])
    paths["grey16"] = d / "grey16.png"
    Image.fromarray((np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)).save(paths["grey16"])
    paths["cmyk"] = d / "cmyk.jpg"
    Image.fromarray(photo).convert("CMYK").save(paths["cmyk"])
    return paths


@pytest.mark.parametrize(
    "backend_args,backend",
    [((), "learned"), (("--backend", "classical"), "classical")],
    ids=["default-learned", "classical"],
)
def test_json_lines_one_per_image_in_order(images, backend_args, backend):
    out = run(str(images["noisy"]), str(images["clean"]), "--json", *backend_args)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [x["image"] for x in lines] == [str(images["noisy"]), str(images["clean"])]
    noisy, clean = lines
    assert noisy["score"] < clean["score"]
    assert noisy["regions"][0]["distortion"] == "noise"
    assert {"bbox", "distortion", "severity", "reason"} <= set(noisy["regions"][0])
    assert noisy["trace"][0]["view"] == [0, 0, 512, 512]
    assert any(step["tool_call"] and step["tool_call"]["name"] == "crop_zoom" for step in noisy["trace"])
    assert noisy["backend"] == backend and noisy["image_size"] == [512, 512]
    assert clean["backend"] == backend
    x0, y0, x1, y1 = noisy["regions"][0]["bbox"]  # the worst region covers the degraded box's centre
    assert 0 <= x0 < 350 < x1 <= 512 and 0 <= y0 < 120 < y1 <= 512
    assert all(1.0 <= d["score"] <= 5.0 for d in lines) and 0.5 < noisy["regions"][0]["severity"] <= 1.0


def test_default_backend_is_learned_and_classical_stays_torch_free(images):
    """The default critic is the learned one (issue 7: it beats classical on every benchmark figure);
    classical is still there by name, and still never imports torch."""
    from assessor.backends import BACKENDS, DEFAULT_BACKEND
    from assessor.cli import build_parser

    assert DEFAULT_BACKEND == "learned" and BACKENDS[0] == "learned" and "classical" in BACKENDS
    assert build_parser().parse_args(["x.png"]).backend == "learned"
    assert build_parser().parse_args(["x.png", "--backend", "classical"]).backend == "classical"
    out = run("--help")
    assert "default: learned" in out.stdout
    code = (
        "import sys; from assessor.cli import main; "
        f"rc = main([{str(images['noisy'])!r}, '--backend', 'classical', '--json', '--no-trace']); "
        "print('torch' in sys.modules, rc, file=sys.stderr)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.stderr.strip().splitlines()[-1] == "False 0", res.stderr
    diagnosis = json.loads(res.stdout)
    assert diagnosis["backend"] == "classical" and diagnosis["regions"][0]["distortion"] == "noise"


def test_table_and_no_trace(images):
    out = run(str(images["noisy"]))
    assert out.returncode == 0
    header, row = out.stdout.splitlines()
    assert header.startswith("IMAGE") and "SCORE" in header
    assert row.startswith(str(images["noisy"])) and "noise" in row
    out = run(str(images["noisy"]), "--json", "--no-trace")
    assert "trace" not in json.loads(out.stdout)


def test_bad_inputs_are_reported_and_the_rest_assessed(images):
    paths = [
        images["text"],
        images["noisy"],
        images["tiny"],
        Path("/nonexistent/x.png"),
        images["grey16"],
        images["cmyk"],
    ]
    out = run(*map(str, paths), "--json")
    assert out.returncode == 1
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [x["image"] for x in lines] == [str(p) for p in paths]
    assert "not an image file" in lines[0]["error"]
    assert "score" in lines[1] and "score" in lines[4] and "score" in lines[5]
    assert "too small" in lines[2]["error"] and "no such file" in lines[3]["error"]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 3 and all(len(e) < 200 for e in errors)


def test_annotate_writes_each_image_without_collisions(images, tmp_path):
    out = run(str(images["noisy"]), str(images["same_name"]), "--annotate", str(tmp_path / "ann"))
    assert out.returncode == 0, out.stderr
    files = sorted(p.name for p in (tmp_path / "ann").iterdir())
    assert files == ["noisy-2.annotated.png", "noisy.annotated.png"]
    a = np.asarray(Image.open(tmp_path / "ann" / "noisy.annotated.png"))
    b = np.asarray(Image.open(images["noisy"]))
    assert a.shape == b.shape and (a != b).any()
    assert Image.open(images["noisy"]).size == (512, 512)  # the input is never touched


def test_help_and_usage_errors():
    out = run("--help")
    assert out.returncode == 0 and "examples:" in out.stdout and "exit status" in out.stdout
    out = run("x.png", "--backend", "nonsense")
    assert out.returncode == 2 and "invalid choice" in out.stderr
    out = run()
    assert out.returncode == 2
