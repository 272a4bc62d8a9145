"""Command line: ``python -m assessor IMG [IMG ...] [--json] [--backend classical] [--annotate DIR]``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .backends import BACKENDS
from .imageio import ImageError, load_image, save_image_atomic
from .schema import Diagnosis

EXAMPLES = """\
examples:
  python -m assessor photo.png                      readable table: score and regions
  python -m assessor *.png --json > diagnoses.jsonl  one JSON object per line per image
  python -m assessor photo.png --annotate out/       also write out/photo.annotated.png
  python -m assessor photo.png --backend vlm --model Qwen/Qwen2.5-VL-7B-Instruct

exit status: 0 when every image was assessed, 1 when any failed (the others are still
assessed and printed), 2 for bad arguments or a backend that cannot be loaded.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m assessor",
        description="Look at images like a careful critic: a score from 1 (bad) to 5 (excellent), "
        "and where and why quality drops (typed regions with severity), with the trace of what was "
        "looked at. The default 'classical' backend needs no weights and no GPU.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="+", metavar="IMG", help="image files (PNG, JPEG, WebP, TIFF, ...)")
    p.add_argument(
        "--json", action="store_true", help="print one JSON object per line per image instead of a table"
    )
    p.add_argument(
        "--backend", default="classical", choices=BACKENDS, help="which critic to use (default: classical)"
    )
    p.add_argument("--annotate", metavar="DIR", help="write each image with its regions drawn on it into DIR")
    p.add_argument("--no-trace", action="store_true", help="leave the trace out of the JSON output")
    g = p.add_argument_group("model backends (vlm, openai)")
    g.add_argument(
        "--model", help="local folder or hub id of the model (vlm), or the served model name (openai)"
    )
    g.add_argument(
        "--device", help="torch device for vlm, e.g. cuda, cuda:1, cpu (default: cuda if available)"
    )
    g.add_argument("--dtype", help="bfloat16, float16 or float32 (default: bfloat16 on GPU, float32 on CPU)")
    g.add_argument(
        "--base-url",
        help="OpenAI-compatible server URL for the openai backend, e.g. http://localhost:8000/v1",
    )
    return p


def backend_options(args: argparse.Namespace) -> dict:
    opts = {}
    for key in ("model", "device", "dtype", "base_url"):
        value = getattr(args, key, None)
        if value is not None:
            opts[key] = value
    return opts


def _unique_name(directory: Path, stem: str, used: set[str]) -> Path:
    name, k = f"{stem}.annotated.png", 1
    while name in used:
        k += 1
        name = f"{stem}-{k}.annotated.png"
    used.add(name)
    return directory / name


def _table_row(path: str, d: Diagnosis) -> str:
    regions = "; ".join(f"{r.distortion} {r.severity:.2f} @{r.bbox}" for r in d.regions[:4]) or "-"
    if len(d.regions) > 4:
        regions += f"; +{len(d.regions) - 4} more"
    return f"{path:<40} {d.score:5.2f}  {regions}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .backends import load_assessor

    try:
        assessor = load_assessor(args.backend, **backend_options(args))
    except (RuntimeError, ValueError, TypeError, OSError) as exc:
        print(f"error: cannot load the {args.backend} backend: {exc}", file=sys.stderr)
        return 2
    annotate_dir = Path(args.annotate) if args.annotate else None
    used_names: set[str] = set()
    failures = 0
    if not args.json:
        print(f"{'IMAGE':<40} {'SCORE':>5}  REGIONS (type severity @[x0,y0,x1,y1])")
    try:
        for path in args.images:
            t0 = time.perf_counter()
            try:
                loaded = load_image(path)
                diagnosis = assessor.assess(loaded.rgb)
            except (ImageError, ValueError) as exc:
                failures += 1
                msg = str(exc) if str(exc).startswith(path) else f"{path}: {exc}"
                print(f"error: {msg}", file=sys.stderr)
                if args.json:
                    print(json.dumps({"image": path, "error": msg}), flush=True)
                continue
            diagnosis.timings.setdefault(
                "load_s", round(time.perf_counter() - t0 - diagnosis.timings.get("total_s", 0.0), 4)
            )
            if args.json:
                out = {"image": path, **diagnosis.to_dict()}
                if args.no_trace:
                    out.pop("trace")
                print(json.dumps(out), flush=True)
            else:
                print(_table_row(path, diagnosis), flush=True)
            if annotate_dir is not None:
                from .annotate import annotate

                target = _unique_name(annotate_dir, Path(path).stem, used_names)
                save_image_atomic(annotate(loaded.rgb, diagnosis), target)
    finally:
        assessor.close()
    return 1 if failures else 0
