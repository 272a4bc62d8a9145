"""Seconds per PiG round with the sdxl refiner: crop-inpaint vs whole-image inpaint at 1024x1024.

    python -m pig.bench_sdxl_gpu               # real SDXL architecture, random weights, on the GPU
    python -m pig.bench_sdxl_gpu --tiny        # the same code path on the CPU with tiny models

No weights are downloaded: the UNet, VAE and both text encoders are built from SDXL's configs with
random weights (timings do not depend on the values), the tokenizer is a byte-level CLIP vocabulary
written on the spot. One region of 256x256 (a local defect) in a 1024x1024 image is refined
  * by crop-inpaint (the default: padded crop, enlarged to --guide-size, pasted back), and
  * by inpainting the whole image with the same mask,
plus one img2img whole-image pass; each timed over --repeats calls after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from .refiners.sdxl_random import SDXL, TINY, SDXLSizes, assemble_pipeline, build_components

# --tiny: the tests' tiny models (``sdxl_random.TINY``), with the UNet and VAE sized for a 128 px
# image and a 2-layer text encoder 2 (nothing here loads a single file).
BENCH_TINY = SDXLSizes(
    unet=dict(TINY.unet, sample_size=16),
    vae=dict(TINY.vae, sample_size=128),
    text_encoder=TINY.text_encoder,
    text_encoder_2=dict(TINY.text_encoder_2, num_hidden_layers=2),
)


def build_pipeline(tiny: bool, device: str, dtype):
    """The inpainting pipeline (one seed for all four models) and the UNet's parameter count."""
    components = build_components(
        BENCH_TINY if tiny else SDXL, seed=0, seed_each=False, device=device, dtype=dtype
    )
    pipe = assemble_pipeline(components, "inpaint")
    return pipe, sum(p.numel() for p in components["unet"].parameters())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pig.bench_sdxl_gpu",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--tiny", action="store_true", help="tiny models on the CPU (checks the code path in seconds)"
    )
    p.add_argument("--size", type=int, help="image side (default 1024, tiny 128)")
    p.add_argument("--region", type=int, help="defect side (default 256, tiny 32)")
    p.add_argument("--steps", type=int, help="sampling steps before strength (default 30, tiny 4)")
    p.add_argument("--strength", type=float, default=0.5, help="denoise strength of the inpaint passes")
    p.add_argument("--guide-size", type=int, help="crop short side (default 768, tiny 64)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default="bfloat16", choices=("float16", "bfloat16", "float32"))
    p.add_argument("--device", help="default cuda (cpu with --tiny)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    import torch

    from assessor.schema import Diagnosis, Region

    from .plan import make_plan
    from .refiners.sdxl import SDXLRefiner, resolve_dtype

    tiny = args.tiny
    device = args.device or ("cpu" if tiny else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA GPU visible; run with --tiny to check the code path on the CPU")
        return 2
    dtype = resolve_dtype(args.dtype if not tiny else "float32", device)
    size = args.size or (128 if tiny else 1024)
    region = args.region or (32 if tiny else 256)
    steps = args.steps or (4 if tiny else 30)
    guide = args.guide_size or (64 if tiny else 768)
    t0 = time.perf_counter()
    pipe, n_unet = build_pipeline(tiny, device, dtype)
    t_build = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    image = np.stack([xx * 255 // size, yy * 255 // size, (xx + yy) * 127 // size], axis=2).astype(np.uint8)
    image = np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)
    x0 = (size - region) // 2 + size // 8
    bbox = [x0, x0 - size // 4, x0 + region, x0 - size // 4 + region]
    diag = Diagnosis(3.0, [Region(bbox, "artifact", 0.6, "benchmark region")], image_size=(size, size))
    whole = Diagnosis(
        3.0, [Region([0, 0, size, size], "blur", 0.6, "benchmark whole image")], image_size=(size, size)
    )
    common = dict(pipe=pipe, steps=steps, guidance_scale=5.0, guide_size=guide, max_size=max(guide, size))
    crop_ref = SDXLRefiner(**common)
    full_ref = SDXLRefiner(**common, crop=False)
    strengths = {"inpaint": (args.strength, args.strength), "img2img": (0.3, 0.3)}
    plan = make_plan(diag, prompt="a photo", global_operation="img2img", strengths=strengths)
    plan_whole = make_plan(whole, prompt="a photo", global_operation="img2img", strengths=strengths)

    def timed(refiner, plan_) -> tuple[float, dict]:
        refiner.refine(image, plan_, seed=0)  # warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times = []
        for k in range(args.repeats):
            t = time.perf_counter()
            out = refiner.refine(image, plan_, seed=k)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
            assert out.shape == image.shape
        return float(np.mean(times)), refiner.last_info[0]

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    s_crop, info_crop = timed(crop_ref, plan)
    s_full, info_full = timed(full_ref, plan)
    s_i2i, info_i2i = timed(crop_ref, plan_whole)
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "CPU"
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    denoise = int(steps * args.strength)
    res = {
        "device": name,
        "dtype": str(dtype).replace("torch.", ""),
        "tiny": tiny,
        "unet_params_billion": round(n_unet / 1e9, 3),
        "build_s": round(t_build, 2),
        "image": size,
        "region": region,
        "steps": steps,
        "strength": args.strength,
        "crop_inpaint_s": round(s_crop, 3),
        "crop_work_size": info_crop["work_size"],
        "crop_box": info_crop["crop"],
        "whole_inpaint_s": round(s_full, 3),
        "whole_work_size": info_full["work_size"],
        "img2img_whole_s": round(s_i2i, 3),
        "speedup": round(s_full / s_crop, 2),
        "peak_gib": round(peak, 2),
    }
    print(
        f"PiG sdxl refiner timing on {name} ({res['dtype']}; SDXL {'tiny' if tiny else 'full-size'} architecture, random weights, "
        f"UNet {res['unet_params_billion']} B params; built in {t_build:.1f} s)"
    )
    print(
        f"  image {size}x{size}, one {region}x{region} region, {steps} steps x strength {args.strength} = {denoise} denoising steps, CFG 5"
    )
    print(
        f"  crop-inpaint   crop {info_crop['crop']} at {info_crop['work_size'][0]}x{info_crop['work_size'][1]}: {s_crop:.3f} s/round"
    )
    print(
        f"  whole-image inpaint at {info_full['work_size'][0]}x{info_full['work_size'][1]}:            {s_full:.3f} s/round"
    )
    print(
        f"  whole-image img2img at {info_i2i['work_size'][0]}x{info_i2i['work_size'][1]} (strength 0.3):   {s_i2i:.3f} s/round"
    )
    print(
        f"  crop-inpaint is {res['speedup']:.2f}x faster; peak GPU memory {peak:.1f} GiB (mean of {args.repeats} after a warm-up)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
