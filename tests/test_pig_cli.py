"""The command line contract: outputs, never overwriting the input, report keys, errors and exit codes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pig.run import default_output, main

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "assessor" / "samples" / "sample.png"


@pytest.fixture()
def sample(tmp_path):
    dst = tmp_path / "photo.png"
    dst.write_bytes(SAMPLE.read_bytes())
    return dst


def test_default_run_improves_the_sample_and_writes_next_to_it(sample, capsys):
    before = sample.read_bytes()
    assert main([str(sample)]) == 0
    out = default_output(str(sample))
    assert out == sample.with_name("photo.pig.png") and out.is_file()
    assert sample.read_bytes() == before  # the input is untouched
    result = np.asarray(Image.open(out).convert("RGB"))
    original = np.asarray(Image.open(sample).convert("RGB"))
    assert result.shape == original.shape and not np.array_equal(result, original)
    captured = capsys.readouterr()
    assert "round 1:" in captured.err and "wrote" in captured.out
    # the summary line carries the score change
    assert "->" in captured.out


def test_report_and_sheet(sample, tmp_path):
    report, sheet, out = tmp_path / "r.json", tmp_path / "s.png", tmp_path / "o.png"
    assert main([str(sample), "-o", str(out), "--report", str(report), "--sheet", str(sheet), "--quiet"]) == 0
    rep = json.loads(report.read_text())
    for key in ("initial_score", "final_score", "iterations", "stop_reason", "history", "image", "output"):
        assert key in rep
    # the default critic is the learned one, the default refiner the classical fixes
    assert rep["backend"] == rep["initial"]["backend"] == rep["final"]["backend"] == "learned"
    assert rep["refiner"] == "classical"
    assert rep["final_score"] > rep["initial_score"]
    assert rep["iterations"] == len(rep["history"]) >= 1
    first = rep["history"][0]
    assert first["accepted"] and first["regions"] and first["plan"]["regions"][0]["operation"] == "inpaint"
    w, h = Image.open(sample).size
    sw, sh = Image.open(sheet).size
    assert sw > 3 * w * min(1.0, 512 / h) and sh > min(h, 512)
    # nothing left behind: no temporary files
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_classical_critic_by_name_improves_the_sample_without_torch(sample, tmp_path):
    """--backend classical: the weight-free critic is still there, and still never imports torch."""
    out, report = tmp_path / "o.png", tmp_path / "r.json"
    code = (
        "import sys; from pig.run import main; "
        f"rc = main([{str(sample)!r}, '-o', {str(out)!r}, '--report', {str(report)!r}, "
        "'--backend', 'classical', '--quiet']); "
        "print('torch' in sys.modules, rc, file=sys.stderr)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )
    assert res.stderr.strip().splitlines()[-1] == "False 0", res.stderr
    rep = json.loads(report.read_text())
    assert rep["backend"] == rep["initial"]["backend"] == "classical" and rep["refiner"] == "classical"
    assert rep["final_score"] > rep["initial_score"] and rep["accepted"] >= 1
    kinds = {r["distortion"] for r in rep["initial"]["regions"]}
    assert {"noise", "jpeg"} <= kinds  # the sample's two local defects
    result = np.asarray(Image.open(out).convert("RGB"))
    assert not np.array_equal(result, np.asarray(Image.open(sample).convert("RGB")))


def test_never_overwrites_the_input(sample, capsys):
    before = sample.read_bytes()
    assert main([str(sample), "-o", str(sample)]) == 2
    assert "never overwrites" in capsys.readouterr().err
    assert main([str(sample), "--report", str(sample)]) == 2
    assert sample.read_bytes() == before


@pytest.mark.parametrize(
    "content,message",
    [(None, "no such file"), (b"not an image", "not an image"), ("tiny", "too small")],
)
def test_bad_images_exit_1_and_write_nothing(tmp_path, capsys, content, message):
    path = tmp_path / "bad.png"
    if content == "tiny":
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    elif content is not None:
        path.write_bytes(content)
    out = tmp_path / "out.png"
    assert main([str(path), "-o", str(out), "--report", str(tmp_path / "r.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists() and not (tmp_path / "r.json").exists()


def test_mask_options(sample, tmp_path, capsys):
    w, h = Image.open(sample).size
    mask = np.zeros((h, w), np.uint8)
    mask[: h // 2, w // 2 :] = 255  # the top-right quarter: the noisy patch
    mpath = tmp_path / "mask.png"
    Image.fromarray(mask).save(mpath)
    out, report = tmp_path / "o.png", tmp_path / "r.json"
    assert main([str(sample), "-o", str(out), "--mask", str(mpath), "--report", str(report), "--quiet"]) == 0
    original = np.asarray(Image.open(sample).convert("RGB"))
    result = np.asarray(Image.open(out).convert("RGB"))
    assert np.array_equal(result[mask == 0], original[mask == 0])  # nothing changes outside the user's mask
    Image.fromarray(np.zeros((10, 10), np.uint8)).resize((w // 2, h)).save(mpath)
    assert main([str(sample), "-o", str(out), "--mask", str(mpath)]) == 1
    assert "mask" in capsys.readouterr().err


def test_argument_errors_exit_2(sample, capsys):
    assert main([str(sample), "--refiner", "sdxl"]) == 2
    assert "--sdxl" in capsys.readouterr().err
    assert main([str(sample), "--region-prompt", "face"]) == 2
    assert main([str(sample), "-o", str(sample.with_suffix(".xyz"))]) == 2
    with pytest.raises(SystemExit) as info:
        main([str(sample), "--max-iters", "many"])
    assert info.value.code == 2


def test_help_and_cheap_import():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, "-m", "pig.run", "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert res.returncode == 0
    for flag in (
        "--output",
        "--report",
        "--sheet",
        "--refiner",
        "--sdxl",
        "--prompt",
        "--max-iters",
        "--seed",
    ):
        assert flag in res.stdout
    assert "exit status" in res.stdout
    code = "import sys, pig, pig.run; pig.load_refiner('classical'); print('torch' in sys.modules, 'diffusers' in sys.modules)"
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )
    assert res.stdout.strip() == "False False"


def test_benchmark_helpers(capsys):
    from pig.benchmark import TARGETS, blind_enhance, print_report

    img = (np.random.default_rng(0).random((64, 80, 3)) * 200).astype(np.uint8)
    out = blind_enhance(img)
    assert out.shape == img.shape and out.dtype == np.uint8 and not np.array_equal(out, img)
    res = {
        "local_mean_gain_db": 1.5,
        "local_improved": 0.7,
        "local_blind_mean_gain_db": -2.0,
        "clean_min_ssim": 0.99,
        "local_median_gain_db": 1.0,
        "local_improved_0_1db": 0.6,
        "local_worse": 0.05,
        "local_found": 0.7,
        "local_found_mean_gain_db": 2.0,
        "local_found_improved": 0.9,
        "local_by_type": {"noise": {"mean_gain_db": 3.0, "improved": 1.0}},
        "global_mean_gain_db": 2.0,
        "global_by_type": {"noise": 2.0},
        "clean_mean_ssim": 0.995,
        "clean_changed": 0.1,
        "counts": {"local": 1},
    }
    assert print_report(res) is True and "MISSED" not in capsys.readouterr().out
    res["clean_min_ssim"] = TARGETS["clean_min_ssim"] - 0.01
    assert print_report(res) is False and "MISSED" in capsys.readouterr().out


def test_oracle_gain_refines_the_true_region_once():
    """The oracle figure: the refiner alone, given the degraded region and its type."""
    from assessor import benchdata
    from assessor.degrade import degrade_region
    from pig.benchmark import oracle_gain
    from pig.refiners.classical import ClassicalRefiner

    clean = benchdata.load_photo("astronaut")
    box = (260, 40, 440, 200)
    d = degrade_region(clean, "noise", 4, box, np.random.default_rng(1))
    case = benchdata.Case("astronaut/local-noise", d.image, clean, "noise", 4, d.box, d.mask)
    assert oracle_gain(case, ClassicalRefiner()) > 3.0  # dB: NLM inside the box takes most grain away
