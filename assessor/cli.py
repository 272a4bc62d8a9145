"""Command line: ``python -m assessor IMG [IMG ...] [--json] [--backend learned] [--annotate DIR]``.

The default critic is ``learned`` (weights ship in the repo, CPU is enough); ``--backend classical``
is the weight-free one that never imports torch."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .backends import BACKENDS, DEFAULT_BACKEND
from .imageio import ImageError, load_image, save_image_atomic
from .schema import Diagnosis
from .vlm.prompts import PROMPT_STYLES

PROMPT_STYLE_NAMES = tuple(PROMPT_STYLES)

EXAMPLES = """\
examples:
  python -m assessor photo.png                      readable table: score and regions
  python -m assessor *.png --json > diagnoses.jsonl  one JSON object per line per image
  python -m assessor photo.png --annotate out/       also write out/photo.annotated.png
  python -m assessor *.png --backend classical       the weight-free critic: no torch import
  python -m assessor photo.png --backend vlm --model Qwen/Qwen2.5-VL-7B-Instruct
  python -m assessor photo.png --backend vlm --model TianheWu/VisualQuality-R1-7B --prompt-style visualquality-r1
  python -m assessor *.png --backend openai --base-url http://localhost:8000/v1 --json

exit status: 0 when every image was assessed, 1 when any failed (the others are still
assessed and printed), 2 for bad arguments or a backend that cannot be loaded.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m assessor",
        description="Look at images like a careful critic: a score from 1 (bad) to 5 (excellent), "
        "and where and why quality drops (typed regions with severity), with the trace of what was "
        "looked at. The default 'learned' backend (a small trained network; its weights ship with "
        "the package) needs no GPU; 'classical' needs no weights and does not import torch.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="+", metavar="IMG", help="image files (PNG, JPEG, WebP, TIFF, ...)")
    p.add_argument(
        "--json", action="store_true", help="print one JSON object per line per image instead of a table"
    )
    p.add_argument(
        "--backend",
        default=DEFAULT_BACKEND,
        choices=BACKENDS,
        help=f"which critic to use (default: {DEFAULT_BACKEND}; classical: no weights, no torch)",
    )
    p.add_argument("--annotate", metavar="DIR", help="write each image with its regions drawn on it into DIR")
    p.add_argument("--no-trace", action="store_true", help="leave the trace out of the JSON output")
    g = p.add_argument_group("model backends (vlm, openai, learned)")
    g.add_argument(
        "--model",
        help="local folder or hub id of the model (vlm), the served model name (openai), or retrained "
        "weights (learned, default: the shipped ones)",
    )
    g.add_argument(
        "--device",
        help="torch device for vlm and learned, e.g. cuda, cuda:1, cpu (default: cuda if available)",
    )
    g.add_argument("--dtype", help="bfloat16, float16 or float32 (default: bfloat16 on GPU, float32 on CPU)")
    g.add_argument(
        "--base-url",
        help="OpenAI-compatible server URL for the openai backend, e.g. http://localhost:8000/v1",
    )
    g.add_argument(
        "--prompt-style",
        choices=PROMPT_STYLE_NAMES,
        help="how the model is asked: qdeepsight (zoom tool + localized JSON answer, default), qinsight "
        '(Q-Insight\'s {"rating": x}), visualquality-r1 (a number in <answer>), plain',
    )
    g.add_argument("--max-turns", type=int, help="model turns per image, the answer included (default 4)")
    g.add_argument("--max-crops", type=int, help="zooms allowed per image (default 3)")
    g.add_argument("--max-new-tokens", type=int, help="tokens the model may write per turn (default 512)")
    g.add_argument(
        "--score-mode",
        choices=("greedy", "expected"),
        help="greedy: the score the model wrote (default); expected: the mean over the rating digits' "
        "probabilities, a finer and steadier score",
    )
    g.add_argument(
        "--samples", type=int, help="self-consistency: average N sampled looks per image (default 1, greedy)"
    )
    g.add_argument("--temperature", type=float, help="sampling temperature when --samples > 1 (default 0.7)")
    g.add_argument("--seed", type=int, help="seed of the sampling (default 0: the same scores every run)")
    g.add_argument("--min-pixels", type=int, help="smallest area (pixels) an image is shown to the model at")
    g.add_argument(
        "--max-pixels",
        type=int,
        help="largest area (pixels) an image is shown to the model at (default 1003520, about 1 MP)",
    )
    v = p.add_argument_group("vlm backend (transformers)")
    v.add_argument("--device-map", help="accelerate device map for models larger than one GPU, e.g. auto")
    v.add_argument(
        "--attn-implementation",
        help="attention kernel: sdpa, flash_attention_2 or eager (default: the model's)",
    )
    v.add_argument("--revision", help="hub revision (branch, tag or commit) of --model")
    v.add_argument(
        "--trust-remote-code",
        action="store_true",
        default=None,
        help="allow the model's own Python code from its folder/hub repo (off by default; only for models you trust)",
    )
    v.add_argument(
        "--fast",
        action="store_true",
        default=None,
        help="static KV cache, compiled by torch on CUDA: ~3x faster decoding after a one-off warm-up",
    )
    o = p.add_argument_group("openai backend (vLLM, SGLang, any OpenAI-compatible server)")
    o.add_argument("--api-key", help="API key for the server (default: $OPENAI_API_KEY, if set)")
    o.add_argument("--concurrency", type=int, help="requests in flight at once (default 8)")
    o.add_argument("--timeout", type=float, help="seconds to wait for one reply (default 120)")
    o.add_argument("--retries", type=int, help="retries of a failed request (default 2)")
    return p


LOOP_ARGS = (
    "prompt_style",
    "max_turns",
    "max_crops",
    "max_new_tokens",
    "score_mode",
    "samples",
    "temperature",
    "seed",
)
VLM_ARGS = ("device_map", "attn_implementation", "revision", "trust_remote_code", "fast")
OPENAI_ARGS = ("api_key", "concurrency", "timeout", "retries")


def backend_options(args: argparse.Namespace) -> dict:
    """The keyword options of the chosen backend that were given on the command line."""
    keys = ["model", "device", "dtype", "base_url"]
    backend = getattr(args, "backend", DEFAULT_BACKEND)
    if backend in ("vlm", "openai"):
        keys += [*LOOP_ARGS, "min_pixels", "max_pixels"]
        keys += list(VLM_ARGS) if backend == "vlm" else list(OPENAI_ARGS)
    opts = {}
    for key in keys:
        value = getattr(args, key, None)
        if value is not None:
            opts[key] = value
    if backend == "openai":  # torch options mean nothing to a server
        for key in ("device", "dtype"):
            if key in opts:
                raise ValueError(f"--{key} applies to the vlm backend, not to openai (the server decides)")
    if backend == "vlm" and "base_url" in opts:
        raise ValueError("--base-url applies to the openai backend; for vlm pass --model")
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
