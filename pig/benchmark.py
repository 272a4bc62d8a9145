"""Benchmark the PiG loop on degraded versions of the photos shipped in scikit-image / matplotlib.

    python -m pig.benchmark [--quick] [--json out.json] [--backend learned] [--refiner classical]

The default critic is the learned one (``--backend classical`` for the weight-free one), the
default refiner the classical OpenCV fixes.

Prints, and checks against the targets of the PiG issue:
  * locally degraded photos (one region of one distortion, levels 3-5): PSNR to the clean photo
    before and after; mean gain >= 1.0 dB and a gain in >= 65% of cases;
  * the same photos with a blind whole-image classical enhancement (denoise, levels, grey-world,
    unsharp mask, applied to every image without looking): the loop must beat it;
  * clean photos and hard negatives: SSIM of the output to the input >= 0.98 for every image;
  * globally degraded photos (levels 2 and 4): PSNR gain, for information;
  * with --oracle, the same local cases refined once with the true box and type (critic
    bypassed): what the refiner's fixes can do when the critic finds everything.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict

import cv2
import numpy as np

from assessor import benchdata
from assessor.backends import BACKENDS, DEFAULT_BACKEND, load_assessor
from assessor.metrics import psnr, ssim
from assessor.schema import Diagnosis, Region
from assessor.zoom import share_inside

from .controller import refine_image
from .plan import make_plan
from .refiners import REFINERS, load_refiner

TARGETS = {"local_mean_gain_db": 1.0, "local_improved": 0.65, "clean_min_ssim": 0.98}


def blind_enhance(rgb: np.ndarray) -> np.ndarray:
    """What a one-click 'auto enhance' does to every image: denoise, stretch levels, grey-world
    white balance, sharpen. The loop must do better by fixing only what the critic found."""
    x = cv2.fastNlMeansDenoisingColored(np.ascontiguousarray(rgb), None, 5, 5, 7, 21).astype(np.float32)
    y = x @ np.array([0.299, 0.587, 0.114], np.float32)
    lo, hi = np.percentile(y, [1, 99])
    x = (x - lo) * (255.0 / max(hi - lo, 1.0))
    means = x.reshape(-1, 3).mean(axis=0)
    x = x * (means.mean() / np.maximum(means, 1e-3))
    blur = cv2.GaussianBlur(x, (0, 0), 1.5)
    x = x + 0.6 * (x - blur)
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def _overlaps(a, b) -> bool:
    """More than a quarter of the smaller box lies in the other."""
    return max(share_inside(a, b), share_inside(b, a)) > 0.25


def oracle_gain(case, refiner, seed: int = 0) -> float:
    """PSNR gain of one refiner pass given the true region and type (at severity 0.7)."""
    h, w = case.image.shape[:2]
    truth = Diagnosis(
        score=3.0,
        regions=[Region(list(case.box), case.distortion, 0.7, "the degraded region (oracle)")],
        trace=[],
        backend="oracle",
        image_size=(w, h),
    )
    plan = make_plan(
        truth, global_operation=refiner.global_operation, strengths=refiner.strengths, image_size=(w, h)
    )
    out = refiner.refine(case.image, plan, seed=seed)
    return psnr(out, case.clean) - psnr(case.image, case.clean)


def evaluate(
    assessor,
    refiner,
    *,
    quick: bool = False,
    seed: int = 0,
    max_iters: int = 4,
    progress=None,
    oracle: bool = False,
) -> dict:
    names = benchdata.PHOTOS[:4] if quick else benchdata.PHOTOS
    photos = {n: benchdata.load_photo(n) for n in names}
    local = benchdata.local_cases(photos, per_type=1 if quick else 2, seed=seed)
    glob = [c for c in benchdata.global_cases(photos, levels=(2, 4), seed=seed) if c.level > 0]
    if quick:
        glob = glob[::2]
    clean = benchdata.clean_cases(photos, seed=seed, negatives_per_kind=1 if quick else 3)
    total = len(local) + len(glob) + len(clean)
    done = 0

    def run(case):
        nonlocal done
        res = refine_image(case.image, assessor, refiner, max_iters=max_iters, seed=seed)
        done += 1
        if progress:
            progress(done, total)
        return res

    rows = {"local": [], "global": [], "clean": []}
    for group, cases in (("local", local), ("global", glob)):
        for c in cases:
            t0 = time.perf_counter()
            res = run(c)
            before = psnr(c.image, c.clean)
            after = psnr(res.image, c.clean)
            row = {
                "case": c.name,
                "distortion": c.distortion,
                "level": c.level,
                "psnr_before": round(before, 3),
                "psnr_after": round(after, 3),
                "gain_db": round(after - before, 3),
                "score_before": res.initial_score,
                "score_after": res.final_score,
                "rounds": len(res.history),
                "kept": res.accepted_rounds,
                "seconds": round(time.perf_counter() - t0, 3),
            }
            if group == "local":
                row["blind_gain_db"] = round(psnr(blind_enhance(c.image), c.clean) - before, 3)
                row["found"] = any(
                    r.distortion == c.distortion and _overlaps(r.bbox, c.box) for r in res.initial.regions
                )
            rows[group].append(row)
    for c in clean:
        res = run(c)
        rows["clean"].append(
            {
                "case": c.name,
                "ssim": round(ssim(res.image, c.image), 5),
                "changed": bool(not np.array_equal(res.image, c.image)),
                "score_before": res.initial_score,
                "score_after": res.final_score,
            }
        )
    gains = np.array([r["gain_db"] for r in rows["local"]])
    blind = np.array([r["blind_gain_db"] for r in rows["local"]])
    by_type = defaultdict(list)
    for r in rows["local"]:
        by_type[r["distortion"]].append(r["gain_db"])
    gby_type = defaultdict(list)
    for r in rows["global"]:
        gby_type[r["distortion"]].append(r["gain_db"])
    clean_ssim = np.array([r["ssim"] for r in rows["clean"]])
    found = np.array([r["gain_db"] for r in rows["local"] if r["found"]])
    extra = {}
    if oracle:
        og = np.array([oracle_gain(c, refiner, seed) for c in local])
        for row, g in zip(rows["local"], og):
            row["oracle_gain_db"] = round(float(g), 3)
        extra = {"oracle_mean_gain_db": float(og.mean()), "oracle_improved": float((og > 0).mean())}
    return {
        **extra,
        "local_mean_gain_db": float(gains.mean()),
        "local_median_gain_db": float(np.median(gains)),
        "local_improved": float((gains > 0).mean()),
        "local_improved_0_1db": float((gains > 0.1).mean()),
        "local_worse": float((gains < -0.1).mean()),
        "local_blind_mean_gain_db": float(blind.mean()),
        "local_found": float(np.mean([r["found"] for r in rows["local"]])),
        "local_found_mean_gain_db": float(found.mean()) if found.size else float("nan"),
        "local_found_improved": float((found > 0).mean()) if found.size else float("nan"),
        "local_by_type": {
            k: {"mean_gain_db": float(np.mean(v)), "improved": float(np.mean(np.array(v) > 0))}
            for k, v in by_type.items()
        },
        "global_mean_gain_db": float(np.mean([r["gain_db"] for r in rows["global"]])),
        "global_by_type": {k: float(np.mean(v)) for k, v in gby_type.items()},
        "clean_min_ssim": float(clean_ssim.min()),
        "clean_mean_ssim": float(clean_ssim.mean()),
        "clean_changed": float(np.mean([r["changed"] for r in rows["clean"]])),
        "counts": {k: len(v) for k, v in rows.items()},
        "rows": rows,
    }


def print_report(res: dict) -> bool:
    ok_all = True

    def line(label, value, target, fmt="{:.3f}", higher=True):
        nonlocal ok_all
        ok = value >= target if higher else value <= target
        ok_all &= ok
        sign = ">=" if higher else "<="
        print(
            f"  {label:<60} {fmt.format(value):>8}   target {sign} {fmt.format(target)}  {'ok' if ok else 'MISSED'}"
        )

    print("Targets:")
    line(
        "local: mean PSNR gain to the clean photo, dB",
        res["local_mean_gain_db"],
        TARGETS["local_mean_gain_db"],
        "{:+.2f}",
    )
    line("local: share of cases whose PSNR rose", res["local_improved"], TARGETS["local_improved"], "{:.1%}")
    line(
        "local: beats a blind whole-image enhancement (dB gain)",
        res["local_mean_gain_db"] - res["local_blind_mean_gain_db"],
        0.0,
        "{:+.2f}",
    )
    line("clean: lowest SSIM of output to input", res["clean_min_ssim"], TARGETS["clean_min_ssim"], "{:.4f}")
    print("Figures:")
    print(
        f"  local: median gain {res['local_median_gain_db']:+.2f} dB; rose by > 0.1 dB in {res['local_improved_0_1db']:.1%}; "
        f"fell by > 0.1 dB in {res['local_worse']:.1%}; blind enhancement {res['local_blind_mean_gain_db']:+.2f} dB"
    )
    print(
        f"  local, where the critic found the defect (right type, overlapping; {res['local_found']:.0%} of cases): "
        f"mean gain {res['local_found_mean_gain_db']:+.2f} dB, improved in {res['local_found_improved']:.0%}"
    )
    print("  local by type (mean gain, share improved):")
    for kind, v in res["local_by_type"].items():
        print(f"    {kind:<16} {v['mean_gain_db']:+7.2f} dB  {v['improved']:.0%}")
    print(
        f"  global (levels 2, 4): mean gain {res['global_mean_gain_db']:+.2f} dB; by type: "
        + ", ".join(f"{k} {v:+.2f}" for k, v in res["global_by_type"].items())
    )
    if "oracle_mean_gain_db" in res:
        print(
            f"  local, one pass with the true box and type (critic bypassed): mean gain "
            f"{res['oracle_mean_gain_db']:+.2f} dB, improved in {res['oracle_improved']:.0%}"
        )
    print(f"  clean: mean SSIM {res['clean_mean_ssim']:.4f}; changed at all: {res['clean_changed']:.0%}")
    print(f"  cases: {res['counts']}")
    return ok_all


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pig.benchmark",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--quick", action="store_true", help="4 photos, fewer cases: a smoke run of about a minute"
    )
    p.add_argument(
        "--backend", default=DEFAULT_BACKEND, choices=BACKENDS, help=f"the critic (default {DEFAULT_BACKEND})"
    )
    p.add_argument("--refiner", default="classical", choices=REFINERS)
    p.add_argument("--sdxl", help="model for --refiner sdxl")
    p.add_argument("--max-iters", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write all figures and per-case rows to this JSON file")
    p.add_argument(
        "--oracle",
        action="store_true",
        help="also refine each local case once with its true box and type (critic bypassed)",
    )
    args = p.parse_args(argv)
    assessor = load_assessor(args.backend)
    refiner = load_refiner(args.refiner, **({"model": args.sdxl} if args.sdxl else {}))
    bar = None
    try:
        from tqdm import tqdm

        bar = tqdm(desc="PiG benchmark", unit="image", file=sys.stderr, disable=not sys.stderr.isatty())
    except ImportError:  # pragma: no cover
        pass

    def progress(done, total):
        if bar is not None:
            bar.total = total
            bar.update(done - bar.n)

    t0 = time.perf_counter()
    res = evaluate(
        assessor,
        refiner,
        quick=args.quick,
        seed=args.seed,
        max_iters=args.max_iters,
        progress=progress,
        oracle=args.oracle,
    )
    if bar is not None:
        bar.close()
    res["wall_s"] = time.perf_counter() - t0
    print(
        f"PiG benchmark: {args.backend} critic, {args.refiner} refiner ({'quick' if args.quick else 'full'}), {res['wall_s']:.0f} s"
    )
    ok = print_report(res)
    if args.json:
        from assessor.imageio import write_text_atomic

        write_text_atomic(json.dumps(res, indent=2), args.json)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
