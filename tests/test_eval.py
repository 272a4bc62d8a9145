"""``python -m assessor.eval``: SRCC/PLCC (raw and after the 4-parameter logistic) per dataset,
on the classical backend, on the shipped-photo benchmark (the default, learned critic) and on the
VLM backend."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_qwen import scripted, tiny_qwen_parts

from assessor.eval import Item, benchmark_items, evaluate, format_table, parse_dataset
from assessor.metrics import fit_logistic4, logistic4, pearson, plcc_logistic, spearman
from assessor.schema import Diagnosis

REPO = Path(__file__).resolve().parents[1]


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "assessor.eval", *args], capture_output=True, text=True, cwd=REPO
    )


def test_logistic_fit_matches_scipy_and_lifts_plcc():
    from scipy.optimize import curve_fit

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 10, 200)
    y = logistic4(x, 4.8, 1.2, 5.0, 1.1) + rng.normal(0, 0.1, 200)
    params = fit_logistic4(x, y)
    assert params == pytest.approx((4.8, 1.2, 5.0, 1.1), abs=0.15)
    reference, _ = curve_fit(logistic4, x, y, p0=[5, 1, 5, 1], maxfev=10000)
    sse = np.sum((logistic4(x, *params) - y) ** 2)
    assert sse <= np.sum((logistic4(x, *reference) - y) ** 2) * 1.0001
    assert plcc_logistic(x, y) > pearson(x, y) and plcc_logistic(x, y) > 0.99
    # a decreasing relation (e.g. a DMOS-like score) is fitted too, and PLCC after it is positive
    assert plcc_logistic(-x, y) == pytest.approx(plcc_logistic(x, y), abs=1e-3)
    assert spearman(x, y) == spearman(x**3, y)  # SRCC only sees the order
    assert np.isnan(plcc_logistic([1, 1, 1, 1], [1, 2, 3, 4]))


def test_evaluate_counts_failures_and_corrupt_images():
    class Flaky:
        def assess(self, image):
            if image.mean() > 250:
                raise RuntimeError("cannot look at white")
            return Diagnosis(score=1.0 + image.mean() / 64.0)

    def bad():
        raise OSError("truncated file")

    items = [
        Item(f"g{v}", 1 + v / 64, lambda v=v: np.full((20, 20, 3), v, np.uint8)) for v in (0, 60, 120, 180)
    ]
    items += [Item("white", 5.0, lambda: np.full((20, 20, 3), 255, np.uint8)), Item("broken", 3.0, bad)]
    r = evaluate(Flaky(), items, "toy", batch_size=4, progress=False)
    assert (r.n, r.failed, r.corrupt) == (4, 1, 1)
    assert r.srcc == pytest.approx(1.0) and r.plcc == pytest.approx(1.0)
    assert "truncated file" in r.first_error
    row = r.row()
    assert row["srcc"] == 1.0 and "predictions" not in row
    table = format_table([r])
    assert table.splitlines()[1].split() == ["toy", "4", "1.0000", "1.0000", "1.0000", "2"]


def test_eval_cli_on_a_folder_dataset(tmp_path):
    from assessor.benchdata import load_photo
    from assessor.degrade import apply_distortion

    photo = load_photo("chelsea")
    lines = ["image,mos"]
    for level in range(1, 6):
        for kind in ("blur", "noise"):
            name = f"{kind}{level}.png"
            Image.fromarray(apply_distortion(photo, kind, level, np.random.default_rng(0))).save(
                tmp_path / name
            )
            lines.append(f"{name},{100 - 20 * level}")
    (tmp_path / "mos.csv").write_text("\n".join(lines) + "\nmissing.png,50\n")
    out = tmp_path / "r.json"
    p = run(
        "--dataset", f"folder={tmp_path},labels=mos.csv,mos_range=0:100,name=cats",
        "--backend", "classical", "--json", str(out), "--predictions", str(tmp_path / "p.csv"), "--quiet",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    header, row = p.stdout.strip().splitlines()
    assert header.split() == ["dataset", "n", "SRCC", "PLCC", "PLCC-l4", "skipped"]
    assert row.split()[:2] == ["cats", "10"] and row.split()[-1] == "1"
    report = json.loads(out.read_text())
    d = report["datasets"][0]
    assert report["backend"] == "classical" and d["n"] == 10 and d["missing"] == 1
    assert d["srcc"] > 0.8 and d["plcc_logistic"] >= d["plcc"] - 0.02
    assert d["mapping"] == "MOS 0..100 -> 1..5"
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 11


def test_eval_cli_benchmark_photos_and_errors():
    p = run(
        "--benchmark-photos", "--photos", "astronaut,coffee", "--types", "blur,jpeg", "--json", "-", "--quiet"
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["backend"] == "learned"  # the default critic
    d = json.loads(p.stdout)["datasets"][0]
    assert d["dataset"] == "benchmark-photos (level)" and d["n"] == 2 * (1 + 2 * 5)
    assert d["srcc"] > 0.8 and d["plcc"] > 0.7
    items = benchmark_items("ssim", photos=["astronaut"], types=["blur"], levels=(1, 5))
    assert [i.name for i in items] == ["astronaut/clean", "astronaut/blur/1", "astronaut/blur/5"]
    assert items[0].mos == 5.0 and 1.0 <= items[2].mos < items[1].mos < 5.0
    assert [i.mos for i in benchmark_items("level", photos=["astronaut"], types=["noise"])] == pytest.approx(
        [5.0, 4.2, 3.4, 2.6, 1.8, 1.0]
    )
    nothing = run()
    assert nothing.returncode == 2 and "nothing to evaluate" in nothing.stderr
    bad = run("--dataset", "folder=/x,colour=red")
    assert bad.returncode == 2 and "unknown config key '--dataset.colour'" in bad.stderr
    missing = run("--dataset", "csiq=/definitely/not/here")
    assert missing.returncode == 2 and "does not exist; set root" in missing.stderr
    assert parse_dataset("koniq=/d,split=test,limit=5").limit == 5
    helped = run("--help")
    assert "--benchmark-photos" in helped.stdout and "koniq" in helped.stdout


def test_evaluate_runs_the_vlm_backend():
    """Any backend: the VLM loop on the tiny model, forced to answer known scores."""
    from assessor.vlm.hf import VLMAssessor

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared CPU: more threads can be many times slower
    try:
        r = _evaluate_tiny_vlm(VLMAssessor)
    finally:
        torch.set_num_threads(threads)
    assert r.n == 4 and r.failed == 1 and "no answer" in r.first_error
    assert [p[2] for p in r.predictions] == [2.0, 1.0, 4.5, 3.0]
    assert r.srcc == pytest.approx(1.0)


def _evaluate_tiny_vlm(VLMAssessor):
    tokenizer, processor, model = tiny_qwen_parts(seed=0)
    assessor = VLMAssessor(model, processor=processor, prompt_style="plain", max_turns=2, batch_size=8)
    answers = [
        "<answer>2</answer>",
        "<answer>1</answer>",
        "<answer>4.5</answer>",
        "no idea",
        "<answer>3</answer>",
    ]
    assessor.transport.logits_processors = [scripted(tokenizer, [[a] for a in answers])]
    rng = np.random.default_rng(0)
    items = [
        Item(f"i{k}", m, lambda: rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
        for k, m in enumerate([2, 1, 5, 3, 3.5])
    ]
    return evaluate(assessor, items, "tiny-vlm", batch_size=5, progress=False)
