"""Benchmark a critic on degraded versions of the photos shipped in scikit-image / matplotlib.

    python -m assessor.benchmark [--backend learned|classical|...] [--quick] [--json out.json]

The default critic is the learned one, as everywhere; ``--backend classical`` for the weight-free one.

Prints, and checks against the targets of the foundation issue:
  * per-type Spearman between distortion level (0 = clean .. 5) and score, pooled over photos;
  * Spearman between score and SSIM to the clean photo over all global cases (every type);
  * on images with one locally degraded region: how often the most severe region hits it (centre
    inside, or IoU >= 0.3) and with the right type;
  * on clean photos and hard negatives (depth of field, flat sky, night): how many get a region
    of severity >= 0.5;
  * seconds per 1024x1024 image on one core.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict

import numpy as np

from . import benchdata
from .backends import BACKENDS, DEFAULT_BACKEND, AssessorBackend, load_assessor
from .metrics import spearman, ssim
from .schema import Diagnosis

TARGETS = {
    "per_type_spearman": 0.9,
    "ssim_spearman": 0.7,
    "local_hit": 0.65,
    "local_type": 0.55,
    "clean_false_alarm": 0.15,
    "seconds_per_mp": 0.3,
}


def _hit(region_box, true_box) -> bool:
    x0, y0, x1, y1 = region_box
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    tx0, ty0, tx1, ty1 = true_box
    if tx0 <= cx < tx1 and ty0 <= cy < ty1:
        return True
    ix = max(0, min(x1, tx1) - max(x0, tx0))
    iy = max(0, min(y1, ty1) - max(y0, ty0))
    inter = ix * iy
    union = (x1 - x0) * (y1 - y0) + (tx1 - tx0) * (ty1 - ty0) - inter
    return union > 0 and inter / union >= 0.3


def evaluate(assessor: AssessorBackend, quick: bool = False, seed: int = 0, progress=None) -> dict:
    names = benchdata.PHOTOS[:4] if quick else benchdata.PHOTOS
    photos = {n: benchdata.load_photo(n) for n in names}
    glob = benchdata.global_cases(photos, levels=(1, 3, 5) if quick else (1, 2, 3, 4, 5), seed=seed)
    local = benchdata.local_cases(photos, per_type=1 if quick else 2, seed=seed)
    clean = benchdata.clean_cases(photos, seed=seed, negatives_per_kind=1 if quick else 3)
    total = len(glob) + len(local) + len(clean)
    done = 0

    def run(case) -> Diagnosis:
        nonlocal done
        d = assessor.assess(case.image)
        done += 1
        if progress:
            progress(done, total)
        return d

    # global: per type, pooled over photos (clean photo = level 0 of every type)
    scores = {c.name: run(c).score for c in glob}
    ssims = {c.name: (1.0 if c.level == 0 else ssim(c.image, c.clean)) for c in glob}
    per_type = {}
    per_type_photo = {}
    for kind in benchdata.SYNTHETIC_TYPES:
        lv, sc = [], []
        photo_rhos = []
        for name in photos:
            plv = [0] + [c.level for c in glob if c.name.startswith(f"{name}/{kind}/")]
            psc = [scores[f"{name}/clean"]] + [
                scores[c.name] for c in glob if c.name.startswith(f"{name}/{kind}/")
            ]
            lv += plv
            sc += psc
            photo_rhos.append(spearman(plv, -np.asarray(psc)))
        per_type[kind] = spearman(lv, -np.asarray(sc))
        per_type_photo[kind] = float(np.nanmean(photo_rhos))
    ssim_rho = spearman([scores[c.name] for c in glob], [ssims[c.name] for c in glob])

    # local
    hits, typed = 0, 0
    local_rows = []
    for c in local:
        d = run(c)
        worst = d.worst
        hit = worst is not None and _hit(worst.bbox, c.box)
        right = hit and worst.distortion == c.distortion
        hits += hit
        typed += right
        local_rows.append(
            {
                "case": c.name,
                "hit": bool(hit),
                "type_ok": bool(right),
                "found": None if worst is None else [worst.distortion, worst.severity, worst.bbox],
            }
        )
    by_type = defaultdict(lambda: [0, 0, 0])
    for row, c in zip(local_rows, local):
        by_type[c.distortion][0] += 1
        by_type[c.distortion][1] += row["hit"]
        by_type[c.distortion][2] += row["type_ok"]

    # clean
    alarms = []
    for c in clean:
        d = run(c)
        bad = [r for r in d.regions if r.severity >= 0.5]
        if bad:
            alarms.append({"case": c.name, "regions": [[r.distortion, r.severity] for r in bad]})
    return {
        "per_type_spearman": per_type,
        "per_type_spearman_mean": float(np.mean(list(per_type.values()))),
        "per_type_spearman_per_photo": per_type_photo,
        "per_type_spearman_per_photo_mean": float(np.mean(list(per_type_photo.values()))),
        "ssim_spearman": ssim_rho,
        "local_hit": hits / len(local),
        "local_type": typed / len(local),
        "local_by_type": {
            k: {"cases": v[0], "hit": v[1] / v[0], "type": v[2] / v[0]} for k, v in by_type.items()
        },
        "clean_false_alarm": len(alarms) / len(clean),
        "clean_alarms": alarms,
        "counts": {"global": len(glob), "local": len(local), "clean": len(clean)},
        "local_rows": local_rows,
    }


def time_one_core(assessor: AssessorBackend, repeats: int = 5) -> float:
    """Seconds per 1024x1024 image with OpenCV held to one thread and the process to one core."""
    import cv2

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    torch = sys.modules.get("torch")  # a torch backend (learned, vlm) is held to one thread too
    torch_threads = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(1)
    affinity = None
    if hasattr(os, "sched_getaffinity"):
        affinity = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(affinity)})
    try:
        imgs = []
        for name in ("astronaut", "coffee", "motorcycle"):
            img = benchdata.load_photo(name)
            imgs.append(cv2.resize(img, (1024, 1024), interpolation=cv2.INTER_CUBIC))
        assessor.assess(imgs[0])  # warm-up
        t0 = time.perf_counter()
        for _ in range(repeats):
            for img in imgs:
                assessor.assess(img)
        return (time.perf_counter() - t0) / (repeats * len(imgs))
    finally:
        cv2.setNumThreads(threads)
        if torch is not None:
            torch.set_num_threads(torch_threads)
        if affinity is not None:
            os.sched_setaffinity(0, affinity)


def print_report(res: dict, seconds: float | None) -> bool:
    ok_all = True

    def line(label: str, value: float, target: float, higher: bool = True, fmt: str = "{:.3f}") -> None:
        nonlocal ok_all
        ok = value >= target if higher else value <= target
        ok_all &= ok
        print(
            f"  {label:<58} {fmt.format(value):>8}   target {'>=' if higher else '<='} {fmt.format(target)}  {'ok' if ok else 'MISSED'}"
        )

    print("Per-type Spearman, level vs score, pooled over photos (per-photo mean in brackets):")
    for kind, rho in res["per_type_spearman"].items():
        print(f"  {kind:<16} {rho:6.3f}   ({res['per_type_spearman_per_photo'][kind]:.3f})")
    print("Targets:")
    line(
        "mean per-type Spearman (pooled over photos)",
        res["per_type_spearman_mean"],
        TARGETS["per_type_spearman"],
    )
    line(
        "Spearman score vs SSIM to the clean photo, all types", res["ssim_spearman"], TARGETS["ssim_spearman"]
    )
    line(
        "local: most severe region hits the degraded one",
        res["local_hit"],
        TARGETS["local_hit"],
        fmt="{:.1%}",
    )
    line("local: ... with the right type", res["local_type"], TARGETS["local_type"], fmt="{:.1%}")
    line(
        "clean: images with a region of severity >= 0.5",
        res["clean_false_alarm"],
        TARGETS["clean_false_alarm"],
        higher=False,
        fmt="{:.1%}",
    )
    if seconds is not None:
        line("seconds per 1024x1024 image, one core", seconds, TARGETS["seconds_per_mp"], higher=False)
    print("Local cases by type (hit / right type):")
    for kind, v in res["local_by_type"].items():
        print(f"  {kind:<16} {v['hit']:.0%} / {v['type']:.0%}  ({v['cases']} cases)")
    if res["clean_alarms"]:
        print(
            "False alarms on clean images:",
            ", ".join(f"{a['case']} {a['regions']}" for a in res["clean_alarms"]),
        )
    print(f"Cases: {res['counts']}")
    return ok_all


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m assessor.benchmark",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--backend", default=DEFAULT_BACKEND, choices=BACKENDS, help=f"the critic (default {DEFAULT_BACKEND})"
    )
    p.add_argument("--model", help="model path or hub id (vlm/openai), retrained .safetensors (learned)")
    p.add_argument("--quick", action="store_true", help="4 photos, 3 levels: a fast smoke run")
    p.add_argument("--no-timing", action="store_true", help="skip the one-core timing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write all figures to this JSON file")
    args = p.parse_args(argv)
    opts = {"model": args.model} if args.model else {}
    assessor = load_assessor(args.backend, **opts)

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty() or done == total:
            print(
                f"\r  assessed {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True
            )

    t0 = time.perf_counter()
    res = evaluate(assessor, quick=args.quick, seed=args.seed, progress=progress)
    seconds = None if args.no_timing else time_one_core(assessor)
    res["seconds_per_1024px"] = seconds
    res["wall_s"] = time.perf_counter() - t0
    print(
        f"Benchmark of the {args.backend} critic ({'quick' if args.quick else 'full'}), {res['wall_s']:.0f} s"
    )
    ok = print_report(res, seconds)
    if args.json:
        from .imageio import write_text_atomic

        write_text_atomic(json.dumps(res, indent=2), args.json)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
