"""``python -m assessor.eval``: SRCC and PLCC of any critic on IQA datasets (see --help).

The same numbers as the IQA papers report: SRCC (Spearman), PLCC (Pearson) on the raw scores
and PLCC after the usual 4-parameter logistic mapping of the scores onto the MOS, per dataset,
as a table and as JSON. Any backend: the learned critic (the default; shipped weights), the
weight-free classical critic, a public checkpoint or a trained one on the vlm backend, or a model
behind an OpenAI-compatible server.

``--benchmark-photos`` evaluates on photos that ship with scikit-image and matplotlib, degraded
by the project's own recipe (``assessor.degrade``: 8 distortion types at levels 1..5, plus the
clean photo), so it needs no download. Its pseudo-MOS (``--pseudo-mos``):

* ``level`` (default): 5 - 0.8 * level, i.e. clean 5.0, level 1 4.2, ..., level 5 1.0 - the
  severity the recipe intends. Equal levels of different types are not perceptually equal, so
  even a perfect critic stays below 1.
* ``ssim``: 1 + 4 * SSIM(clean, degraded), clipped to [1, 5] - a full-reference proxy, which
  itself under-rates exposure and colour changes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .backends import BACKENDS, DEFAULT_BACKEND, load_assessor
from .metrics import pearson, plcc_logistic, spearman, ssim

PSEUDO_MOS = ("level", "ssim")


@dataclass
class Item:
    name: str
    mos: float
    load: Callable[[], np.ndarray]


@dataclass
class DatasetResult:
    dataset: str
    n: int
    srcc: float
    plcc: float
    plcc_logistic: float
    missing: int = 0  # labelled images absent on disk
    corrupt: int = 0  # images that could not be read
    failed: int = 0  # images the critic could not assess
    mapping: str = ""
    seconds: float = 0.0
    first_error: str | None = None
    predictions: list[tuple[str, float, float]] = field(default_factory=list, repr=False)

    def row(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("predictions")
        for k in ("srcc", "plcc", "plcc_logistic"):
            out[k] = None if math.isnan(out[k]) else round(out[k], 4)
        out["seconds"] = round(out["seconds"], 2)
        return out


def correlations(pred: Sequence[float], mos: Sequence[float]) -> tuple[float, float, float]:
    if len(pred) < 2:
        return float("nan"), float("nan"), float("nan")
    return spearman(pred, mos), pearson(pred, mos), plcc_logistic(pred, mos)


# --------------------------------------------------------------------------------------------
# the shipped-photo benchmark as a dataset


def benchmark_items(
    pseudo_mos: str = "level",
    photos: Sequence[str] | None = None,
    types: Sequence[str] | None = None,
    levels: Sequence[int] = (1, 2, 3, 4, 5),
    seed: int = 0,
) -> list[Item]:
    """Clean and degraded shipped photos with their pseudo-MOS (see the module docstring)."""
    from .benchdata import PHOTOS, global_cases, load_photo
    from .degrade import SYNTHETIC_TYPES

    if pseudo_mos not in PSEUDO_MOS:
        raise ValueError(f"pseudo_mos must be one of {', '.join(PSEUDO_MOS)}, got {pseudo_mos!r}")
    names = list(photos or PHOTOS)
    unknown = [n for n in names if n not in PHOTOS]
    if unknown:
        raise ValueError(f"unknown photo(s) {', '.join(unknown)}; choose from {', '.join(PHOTOS)}")
    kinds = list(types or SYNTHETIC_TYPES)
    bad = [t for t in kinds if t not in SYNTHETIC_TYPES]
    if bad:
        raise ValueError(
            f"unknown distortion type(s) {', '.join(bad)}; choose from {', '.join(SYNTHETIC_TYPES)}"
        )
    items = []
    for case in global_cases({n: load_photo(n) for n in names}, levels=levels, seed=seed, types=kinds):
        if case.level == 0:
            mos = 5.0
        elif pseudo_mos == "level":
            mos = 5.0 - 0.8 * case.level
        else:
            mos = float(np.clip(1.0 + 4.0 * ssim(case.clean, case.image), 1.0, 5.0))
        items.append(Item(case.name, mos, lambda i=case.image: i))
    return items


def dataset_items(spec) -> tuple[list[Item], Any]:
    from .train.data import load_dataset, read_rgb

    ds = load_dataset(spec)
    return [Item(s.name, s.mos, lambda p=s.path: read_rgb(p)) for s in ds.samples], ds


# --------------------------------------------------------------------------------------------
# running a critic


def assess_scores(backend, images: list[np.ndarray]) -> list[tuple[float | None, str | None]]:
    """(score or None, error) per image; one bad image never stops the others."""
    if hasattr(backend, "assess_results"):  # the VLM loops batch and report per image
        return [
            (float(r.diagnosis.score), None) if r.diagnosis is not None else (None, r.error)
            for r in backend.assess_results(images)
        ]
    out = []
    for img in images:
        try:
            out.append((float(backend.assess(img).score), None))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # a critic's failure on one image is a counted skip
            out.append((None, f"{type(exc).__name__}: {exc}"))
    return out


def evaluate(
    backend,
    items: Sequence[Item],
    name: str,
    *,
    batch_size: int = 8,
    progress: bool = True,
    mapping: str = "",
    missing: int = 0,
) -> DatasetResult:
    from .imageio import ImageError

    t0 = time.perf_counter()
    result = DatasetResult(
        name, 0, float("nan"), float("nan"), float("nan"), missing=missing, mapping=mapping
    )
    last_report = t0
    for b in range(0, len(items), batch_size):
        chunk = items[b : b + batch_size]
        images, kept = [], []
        for item in chunk:
            try:
                images.append(item.load())
                kept.append(item)
            except (ImageError, OSError, ValueError) as exc:
                result.corrupt += 1
                result.first_error = result.first_error or f"{item.name}: {exc}"
        for item, (score, error) in zip(kept, assess_scores(backend, images) if images else []):
            if score is None:
                result.failed += 1
                result.first_error = result.first_error or f"{item.name}: {error}"
            else:
                result.predictions.append((item.name, item.mos, score))
        now = time.perf_counter()
        if progress and (now - last_report > 5.0 or b + batch_size >= len(items)):
            print(
                f"{name}: {min(b + batch_size, len(items))}/{len(items)} images", file=sys.stderr, flush=True
            )
            last_report = now
    result.n = len(result.predictions)
    if result.predictions:
        mos = [p[1] for p in result.predictions]
        pred = [p[2] for p in result.predictions]
        result.srcc, result.plcc, result.plcc_logistic = correlations(pred, mos)
    result.seconds = time.perf_counter() - t0
    return result


def format_table(results: Sequence[DatasetResult]) -> str:
    def num(v: float) -> str:
        return "    -" if math.isnan(v) else f"{v:.4f}"

    width = max([len("dataset")] + [len(r.dataset) for r in results])
    lines = [f"{'dataset':<{width}}  {'n':>6}  {'SRCC':>6}  {'PLCC':>6}  {'PLCC-l4':>7}  skipped"]
    for r in results:
        skipped = r.missing + r.corrupt + r.failed
        lines.append(
            f"{r.dataset:<{width}}  {r.n:>6}  {num(r.srcc):>6}  {num(r.plcc):>6}  {num(r.plcc_logistic):>7}  {skipped}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# command line


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_dataset(text: str):
    """``LAYOUT=ROOT[,key=value...]`` -> DatasetSpec (keys: those of a training dataset entry)."""
    from .train.config import ConfigError, DatasetSpec, from_dict

    head, *rest = [p for p in text.split(",") if p]
    if "=" not in head:
        raise ConfigError(f"--dataset expects LAYOUT=ROOT[,key=value...], got {text!r}")
    layout, root = head.split("=", 1)
    fields: dict[str, Any] = {"layout": layout.strip(), "root": root.strip()}
    for part in rest:
        if "=" not in part:
            raise ConfigError(f"--dataset {text!r}: {part!r} is not key=value")
        key, value = part.split("=", 1)
        key = key.strip()
        if key == "mos_range":
            fields[key] = [float(v) for v in value.split(":")]
        elif key in ("limit",):
            fields[key] = int(value)
        elif key == "test_fraction":
            fields[key] = float(value)
        else:
            fields[key] = value
    return from_dict(DatasetSpec, fields, "--dataset")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m assessor.eval",
        description="SRCC and PLCC (raw and after a 4-parameter logistic fit) of a critic on IQA datasets.",
        epilog=(
            "datasets: --dataset LAYOUT=ROOT[,split=test,limit=N,labels=FILE,images=DIR,mos_range=LO:HI]\n"
            "  layouts: koniq, spaq, kadid, livec, pipal, agiqa3k, csiq, folder (a CSV/JSON of image,mos)\n"
            "  each dataset's MOS is mapped to 1..5 (table in assessor/train/data.py); SRCC does not care.\n"
            "examples:\n"
            "  python -m assessor.eval --benchmark-photos                     (the learned critic)\n"
            "  python -m assessor.eval --benchmark-photos --backend classical\n"
            "  python -m assessor.eval --backend vlm --model runs/koniq/final/merged \\\n"
            "      --dataset koniq=/data/koniq10k,split=test --dataset spaq=/data/SPAQ --json results.json\n"
            "  python -m assessor.eval --backend openai --model qwen2.5-vl --option base_url=http://localhost:8000/v1 \\\n"
            "      --dataset kadid=/data/kadid10k"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dataset", action="append", default=[], metavar="LAYOUT=ROOT[,k=v]", help="a dataset (repeatable)"
    )
    parser.add_argument(
        "--benchmark-photos",
        action="store_true",
        help="also evaluate on the shipped photos degraded at levels 1..5 (no download)",
    )
    parser.add_argument(
        "--pseudo-mos", choices=PSEUDO_MOS, default="level", help="pseudo-MOS of the benchmark photos"
    )
    parser.add_argument(
        "--photos", default=None, help="benchmark photos to use, comma-separated (default: all)"
    )
    parser.add_argument(
        "--types", default=None, help="benchmark distortion types, comma-separated (default: all)"
    )
    parser.add_argument(
        "--backend", choices=BACKENDS, default=DEFAULT_BACKEND, help=f"the critic (default {DEFAULT_BACKEND})"
    )
    parser.add_argument(
        "--model", default=None, help="model folder or hub id (vlm), served model name (openai)"
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="backend option, e.g. device=cuda, score_mode=expected, max_pixels=1003520 (repeatable)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="images per call to the critic")
    parser.add_argument("--limit", type=int, default=None, help="at most N images per dataset")
    parser.add_argument(
        "--json",
        default=None,
        metavar="PATH",
        help="write the results as JSON ('-' prints it instead of the table)",
    )
    parser.add_argument(
        "--predictions", default=None, metavar="CSV", help="write every image's MOS and predicted score"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .train.config import ConfigError
    from .train.data import DatasetError

    if not args.dataset and not args.benchmark_photos:
        print(
            "error: nothing to evaluate: give --dataset LAYOUT=ROOT and/or --benchmark-photos",
            file=sys.stderr,
        )
        return 2
    options: dict[str, Any] = {}
    for item in args.option:
        if "=" not in item:
            print(f"error: --option expects KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        key, value = item.split("=", 1)
        options[key.strip()] = _value(value)
    if args.model is not None:
        options["model"] = args.model
    try:
        jobs = []
        for text in args.dataset:
            spec = parse_dataset(text)
            if args.limit is not None:
                spec.limit = args.limit
            items, ds = dataset_items(spec)
            jobs.append((spec.label, items, ds.mapping, ds.missing))
        if args.benchmark_photos:
            items = benchmark_items(
                args.pseudo_mos,
                photos=args.photos.split(",") if args.photos else None,
                types=args.types.split(",") if args.types else None,
            )
            if args.limit is not None:
                items = items[: args.limit]
            jobs.append(
                (f"benchmark-photos ({args.pseudo_mos})", items, f"pseudo-MOS from the {args.pseudo_mos}", 0)
            )
        backend = load_assessor(args.backend, **options)
    except (ConfigError, DatasetError, ValueError, TypeError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results = []
    try:
        for name, items, mapping, missing in jobs:
            results.append(
                evaluate(
                    backend,
                    items,
                    name,
                    batch_size=max(1, args.batch_size),
                    progress=not args.quiet,
                    mapping=mapping,
                    missing=missing,
                )
            )
    finally:
        backend.close()
    report = {
        "backend": args.backend,
        "model": args.model,
        "options": {k: v for k, v in options.items() if k != "model"},
        "datasets": [r.row() for r in results],
    }
    if args.json == "-":
        print(json.dumps(report, indent=2))
    else:
        print(format_table(results))
        for r in results:
            if r.first_error:
                print(
                    f"{r.dataset}: skipped {r.missing + r.corrupt + r.failed}; first: {r.first_error}",
                    file=sys.stderr,
                )
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(report, f, indent=2)
                f.write("\n")
    if args.predictions:
        import csv

        with open(args.predictions, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["dataset", "image", "mos", "score"])
            for r in results:
                for name, mos, score in r.predictions:
                    w.writerow([r.dataset, name, f"{mos:.4f}", f"{score:.4f}"])
    return 0 if all(r.n >= 2 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
