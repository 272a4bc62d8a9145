"""Command line: ``python -m pig.run IMG [-o OUT] [--report R.json] [--sheet S.png] ...``.

Assess, fix exactly the diagnosed places, re-assess, keep only what raises the score. The default
critic is the learned one (its weights ship in the repo, CPU is enough), the default refiner the
classical OpenCV fixes: no downloads, no GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

EXAMPLES = """\
examples:
  python -m pig.run photo.png                          learned critic, classical fixes: photo.pig.png
  python -m pig.run photo.png --backend classical      the weight-free critic: no torch import
  python -m pig.run photo.png -o out.png --report r.json --sheet sheet.png
  python -m pig.run photo.png --mask hands.png --mask-mode replace
  python -m pig.run photo.png --refiner sdxl --sdxl stabilityai/stable-diffusion-xl-base-1.0 \\
      --prompt "portrait of an astronaut"
  python -m pig.run photo.png --sdxl ~/ComfyUI/models/checkpoints/sd_xl_base_1.0.safetensors
  python -m pig.run photo.png --sdxl sdxl-inpaint.safetensors --sdxl-config ./sdxl-inpaint-folder

The loop keeps a change only if the critic's score rises by at least --margin, so the output is
never worse than the input by the critic's own measure; it stops after --patience rounds without
improvement, after --max-iters rounds, or when nothing is left to fix. The input is never
overwritten; every file is written whole or not at all.

exit status: 0 done (even when nothing could be improved), 1 the image could not be read or
refined, 2 bad arguments, or a model / refiner / device that cannot be loaded.
"""


def build_parser() -> argparse.ArgumentParser:
    from assessor.backends import BACKENDS, DEFAULT_BACKEND

    from .refiners import REFINERS

    p = argparse.ArgumentParser(
        prog="python -m pig.run",
        description="PiG (Perceptual-in-Generation): a critic (the learned one by default) diagnoses the "
        "image (score 1-5 and typed regions), the refiner fixes exactly those places (classical OpenCV "
        "fixes by default, or SDXL inpainting), the critic looks again, and only changes that raise the "
        "score are kept.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", metavar="IMG", help="the image to refine (PNG, JPEG, WebP, TIFF, ...)")
    p.add_argument("-o", "--output", metavar="OUT", help="where to write the result (default: IMG.pig.png)")
    p.add_argument("--report", metavar="R.json", help="write scores, rounds and plans as JSON")
    p.add_argument("--sheet", metavar="SHEET.png", help="write a before / diagnosis / after contact sheet")
    p.add_argument("--refiner", choices=REFINERS, help="classical (default) or sdxl (implied by --sdxl)")
    p.add_argument("--prompt", default="", help="what the image shows; merged with per-defect additions")
    p.add_argument("--negative-prompt", default="", help="what to avoid; merged with per-defect terms")
    p.add_argument(
        "--region-prompt",
        action="append",
        default=[],
        metavar="N=TEXT",
        help="own prompt for diagnosed region N (0 = the first listed); repeatable",
    )
    p.add_argument("--mask", metavar="MASK.png", help="your own mask (white = may change)")
    p.add_argument(
        "--mask-mode",
        choices=("narrow", "replace"),
        default="narrow",
        help="narrow: fix diagnosed regions only inside your mask (default); replace: fix your mask only",
    )
    p.add_argument("--max-iters", type=int, default=4, metavar="N", help="at most N rounds (default 4)")
    p.add_argument(
        "--patience", type=int, default=1, help="stop after this many rounds without gain (default 1)"
    )
    p.add_argument(
        "--margin",
        type=float,
        default=None,
        help="score gain a round must reach to be kept (default: 0.02 for the classical fixes, 0.05 for sdxl)",
    )
    p.add_argument("--min-severity", type=float, default=0.15, help="ignore regions milder than this (0-1)")
    p.add_argument("--seed", type=int, default=0, help="random seed (round k uses seed + k - 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-round lines")
    g = p.add_argument_group("critic")
    g.add_argument(
        "--backend",
        default=DEFAULT_BACKEND,
        choices=BACKENDS,
        help=f"which critic (default {DEFAULT_BACKEND}; classical: no weights, no torch import)",
    )
    g.add_argument(
        "--critic-model",
        help="model path or hub id for the vlm critic, served name for openai, retrained .safetensors "
        "for learned (default: the shipped weights)",
    )
    g.add_argument("--base-url", help="OpenAI-compatible server URL for the openai critic")
    s = p.add_argument_group("sdxl refiner")
    s.add_argument(
        "--sdxl",
        metavar="PATH_OR_ID",
        help="diffusers folder, hub id, or single .safetensors checkpoint (base or inpainting model)",
    )
    s.add_argument("--sdxl-config", metavar="DIR_OR_ID", help="diffusers config for a single-file checkpoint")
    s.add_argument("--device", help="cuda, cuda:1, mps or cpu (default: cuda if available)")
    s.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), help="default float16 on GPU")
    s.add_argument(
        "--cpu-offload", action="store_true", help="keep models in RAM, move each to the GPU in turn"
    )
    s.add_argument("--steps", type=int, default=30, help="sampling steps before strength (default 30)")
    s.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance (default 5.0)")
    s.add_argument("--scheduler", help="euler, euler_a, dpmpp_2m, dpmpp_2m_karras, ddim, unipc")
    s.add_argument(
        "--guide-size", type=int, default=768, help="a region's crop is enlarged to this short side"
    )
    s.add_argument("--max-size", type=int, default=1024, help="longest side the model works at")
    return p


def default_output(image_path: str) -> Path:
    p = Path(image_path)
    return p.with_name(f"{p.stem}.pig.png")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _region_prompts(items: list[str]) -> dict[int, str]:
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip().isdigit():
            raise ValueError(f"--region-prompt {item!r}: expected N=TEXT, e.g. 0='a smiling face'")
        out[int(key)] = text
    return out


class _Progress:
    """A tqdm bar on stderr (a plain line per round without tqdm or when quiet)."""

    def __init__(self, total: int, quiet: bool):
        self.quiet = quiet
        self.bar = None
        if not quiet:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc="PiG", unit="round", file=sys.stderr, leave=False)
            except ImportError:  # pragma: no cover - tqdm comes with transformers
                self.bar = None

    def __call__(self, done: int, total: int, record) -> None:
        if record is None or self.quiet:
            return
        kept = "kept" if record.accepted else "rolled back"
        kinds = ", ".join(sorted({r.distortion for r in record.regions})) or "-"
        line = (
            f"round {record.index}: {record.score_before:.2f} -> {record.score_after:.2f} "
            f"({kept}; {len(record.regions)} region(s): {kinds}; {record.seconds:.1f} s)"
        )
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
            self.bar.update(done - self.bar.n)
            self.bar.set_postfix(score=f"{max(record.score_before, record.score_after):.2f}")
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from assessor.imageio import ImageError, load_image, save_image_atomic, write_text_atomic

    refiner_name = args.refiner or ("sdxl" if args.sdxl else "classical")
    if refiner_name == "sdxl" and not args.sdxl:
        print(
            "error: --refiner sdxl needs --sdxl PATH_OR_ID (a diffusers folder, hub id or .safetensors)",
            file=sys.stderr,
        )
        return 2
    if args.max_iters < 0 or args.patience < 1:
        print("error: --max-iters must be >= 0 and --patience >= 1", file=sys.stderr)
        return 2
    try:
        region_prompts = _region_prompts(args.region_prompt)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    src = Path(args.image)
    out_path = Path(args.output) if args.output else default_output(args.image)
    for label, target in (("output", out_path), ("--report", args.report), ("--sheet", args.sheet)):
        if target is not None and _same_file(src, Path(target)):
            print(
                f"error: {label} {target} is the input image; PiG never overwrites its input", file=sys.stderr
            )
            return 2
    if out_path.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"):
        print(f"error: output {out_path}: unknown image extension; use .png, .jpg or .webp", file=sys.stderr)
        return 2
    try:
        loaded = load_image(args.image)
        user_mask = None
        if args.mask:
            mask_img = load_image(args.mask)
            if mask_img.size != loaded.size:
                raise ImageError(
                    f"{args.mask}: the mask is {mask_img.size[0]}x{mask_img.size[1]}, "
                    f"the image {loaded.size[0]}x{loaded.size[1]}"
                )
            user_mask = mask_img.rgb.max(axis=2)
    except ImageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    from assessor.backends import load_assessor

    from .controller import refine_image
    from .refiners import RefinerError, load_refiner

    critic_opts = {}
    if args.critic_model:
        critic_opts["model"] = args.critic_model
    if args.base_url:
        critic_opts["base_url"] = args.base_url
    try:
        assessor = load_assessor(args.backend, **critic_opts)
    except (RuntimeError, ValueError, TypeError, OSError) as exc:
        print(f"error: cannot load the {args.backend} critic: {exc}", file=sys.stderr)
        return 2
    opts: dict = {}
    if refiner_name == "sdxl":
        opts = {
            "model": args.sdxl,
            "config": args.sdxl_config,
            "device": args.device,
            "dtype": args.dtype,
            "cpu_offload": args.cpu_offload,
            "steps": args.steps,
            "guidance_scale": args.guidance,
            "scheduler": args.scheduler,
            "guide_size": args.guide_size,
            "max_size": args.max_size,
        }
    try:
        refiner = load_refiner(refiner_name, **opts)
    except (RefinerError, ValueError, OSError) as exc:
        print(f"error: cannot load the {refiner_name} refiner: {exc}", file=sys.stderr)
        assessor.close()
        return 2

    progress = _Progress(args.max_iters, args.quiet)
    t0 = time.perf_counter()
    try:
        result = refine_image(
            loaded.rgb,
            assessor,
            refiner,
            max_iters=args.max_iters,
            patience=args.patience,
            margin=args.margin,
            seed=args.seed,
            prompt=args.prompt,
            negative_prompt=args.negative_prompt,
            user_mask=user_mask,
            user_mask_mode=args.mask_mode,
            region_prompts=region_prompts,
            min_severity=args.min_severity,
            progress=progress,
        )
    except (ImageError, ValueError, RefinerError) as exc:
        progress.close()
        print(f"error: {args.image}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        progress.close()
        print("interrupted: nothing written", file=sys.stderr)
        return 130
    finally:
        refiner.close()
        assessor.close()
    progress.close()

    try:
        save_image_atomic(result.image, out_path, alpha=loaded.alpha)
        if args.report:
            report = {
                "image": str(src),
                "output": str(out_path),
                "backend": args.backend,
                "refiner": refiner_name,
                **result.to_report(),
            }
            write_text_atomic(json.dumps(report, indent=2), args.report)
        if args.sheet:
            from .sheet import contact_sheet

            save_image_atomic(
                contact_sheet(loaded.rgb, result.initial, result.image, result.final), args.sheet
            )
    except (ImageError, OSError) as exc:
        print(f"error: cannot write: {exc}", file=sys.stderr)
        return 1
    gain = result.final_score - result.initial_score
    print(
        f"{args.image}: score {result.initial_score:.2f} -> {result.final_score:.2f} ({gain:+.2f}) in "
        f"{len(result.history)} round(s), {result.accepted_rounds} kept, stopped: {result.stop_reason}; "
        f"{time.perf_counter() - t0:.1f} s; wrote {out_path}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
