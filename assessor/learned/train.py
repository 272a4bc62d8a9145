"""Train the learned critic from scratch: ``python -m assessor.train_embedded``.

Everything comes from this script: synthesized scenes and a few shipped non-benchmark images,
degraded with the benchmark's own recipe (``assessor.degrade``) at graded strengths, globally
and in regions of varied shapes, sometimes several at once, plus hard negatives. Deterministic
given ``--seed`` (same torch build, device and thread count give the same weights). Writes the
weights (safetensors) and a JSON card with the data recipe, seed, command, date, timings and the
benchmark's figures (run on held-out photos at the end unless ``--no-benchmark``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import data as D
from .model import MAP_STRIDE, TYPES, CriticNet, NetConfig, count_parameters, save_weights

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "critic.safetensors"
DEFAULT_CARD = WEIGHTS_DIR / "critic.json"
POS_WEIGHT = 4.0  # a defect covers a few percent of all cells: weigh its cells up


@dataclass
class TrainConfig:
    seed: int = 0
    steps: int = 7000
    batch: int = 16
    crop: int = 160
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 200
    threads: int = 1
    device: str = "cpu"
    bf16: bool = True  # bfloat16 autocast for the convolutions (the fixed front end stays float32)
    workers: int = 1  # 1: synthesize data in a second process (the same batches, in the same order)
    loss_weights: dict = field(default_factory=lambda: {"presence": 1.0, "severity": 1.0, "damage": 2.0})


@dataclass
class TrainResult:
    net: CriticNet
    losses: list[float]
    seconds: float
    table: D.SeverityTable
    validation: dict


def pack(samples: list[D.Sample]) -> tuple[np.ndarray, ...]:
    return (
        np.stack([s.image for s in samples]),
        np.stack([s.presence for s in samples]),
        np.stack([s.severity for s in samples]),
        np.stack([s.damage for s in samples]),
    )


def to_tensors(samples: list[D.Sample] | tuple[np.ndarray, ...], device) -> tuple[torch.Tensor, ...]:
    images, presence, severity, damage = pack(samples) if isinstance(samples, list) else samples
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float() / 255.0
    return (x, *(torch.from_numpy(a).to(device) for a in (presence, severity, damage)))


def batches(seed: int, data_config: D.DataConfig, table: D.SeverityTable, batch: int, steps: int):
    """The training batches, in order: a pure function of the seed and the recipe."""
    stream = D.SampleStream(seed, data_config, table=table)
    for _ in range(steps):
        yield pack(stream.batch(batch, data_config.crop))


def _produce(queue, args) -> None:
    import cv2

    cv2.setNumThreads(1)
    try:
        for item in batches(*args):
            queue.put(item)
    except BaseException as exc:  # let the trainer fail with the reason instead of waiting forever
        queue.put(RuntimeError(f"data worker failed: {exc!r}"))
        raise
    queue.put(None)


def prefetched(args: tuple, workers: int, depth: int = 8):
    """``batches(*args)``, drawn in a child process when ``workers`` > 0 (the main process then
    only trains): the same batches in the same order either way."""
    if workers <= 0:
        yield from batches(*args)
        return
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # a forked child can inherit a thread pool's held lock and hang
    queue = ctx.Queue(depth)
    proc = ctx.Process(target=_produce, args=(queue, args), daemon=True)
    proc.start()
    try:
        import queue as queue_module

        while True:
            try:
                item = queue.get(timeout=2.0)
            except queue_module.Empty:
                if not proc.is_alive():
                    raise RuntimeError(
                        f"the data worker stopped (exit code {proc.exitcode}); retry with --workers 0"
                    ) from None
                continue
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        if proc.is_alive():
            proc.terminate()
        proc.join(timeout=5)


def loss_terms(
    net: CriticNet, batch, weights: dict, bf16: bool = False
) -> tuple[torch.Tensor, dict[str, float]]:
    x, presence, severity, damage = batch
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = net(x)
    out = type(out)(out.presence.float(), out.severity.float(), out.damage.float())
    bce = F.binary_cross_entropy_with_logits(
        out.presence, presence, pos_weight=torch.tensor(POS_WEIGHT, device=presence.device)
    )
    where = (presence > 0.25).float()
    sev_all = F.binary_cross_entropy_with_logits(out.severity, severity, reduction="none")
    sev = (sev_all * where).sum() / where.sum().clamp_min(1.0)
    dmg = F.binary_cross_entropy_with_logits(out.damage, damage)
    total = weights["presence"] * bce + weights["severity"] * sev + weights["damage"] * dmg
    return total, {"presence": bce.item(), "severity": sev.item(), "damage": dmg.item()}


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0))))


@torch.no_grad()
def validate(
    net: CriticNet, seed: int, table: D.SeverityTable, data_config: D.DataConfig, n: int = 96
) -> dict:
    """Figures on fresh synthetic samples (a seed the training stream never uses)."""
    net.eval()
    stream = D.SampleStream(seed + 10_000, D.DataConfig(**{**data_config.to_dict(), "pool": 48}), table=table)
    samples = [stream.sample() for _ in range(n)]
    x, presence, severity, damage = to_tensors(samples, next(net.parameters()).device)
    outs = [net(x[i : i + 16]) for i in range(0, n, 16)]
    prob = torch.sigmoid(torch.cat([o.presence for o in outs]))
    dmg = torch.sigmoid(torch.cat([o.damage for o in outs]))
    pos, pred = presence > 0.5, prob > 0.5
    tp = (pos & pred).sum().item()
    res = {
        "samples": n,
        "cell_precision": round(tp / max(1, pred.sum().item()), 4),
        "cell_recall": round(tp / max(1, pos.sum().item()), 4),
        "damage_mae": round(float(torch.abs(dmg - damage).mean()), 4),
    }
    clean = [i for i, s in enumerate(samples) if not s.applied]
    if clean:
        res["clean_max_presence_mean"] = round(float(prob[clean].amax(dim=(1, 2, 3)).mean()), 4)
    net.train()
    return res


def train(
    cfg: TrainConfig,
    data_config: D.DataConfig | None = None,
    net_config: NetConfig | None = None,
    *,
    table: D.SeverityTable | None = None,
    log=print,
    log_every: int = 25,
    validate_at_end: bool = True,
) -> TrainResult:
    torch.manual_seed(cfg.seed)
    if cfg.device == "cpu":
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    data_config = data_config or D.DataConfig(crop=cfg.crop)
    t0 = time.perf_counter()
    if table is None:
        table = D.severity_table(D.calibration_scenes(cfg.seed), cfg.seed)
        log(
            f"severity table from the calibration scenes in {time.perf_counter() - t0:.0f} s: {table.to_dict()}"
        )
    data = prefetched((cfg.seed, data_config, table, cfg.batch, cfg.steps), cfg.workers)
    net = CriticNet(net_config).to(device).train()
    log(
        f"net: {count_parameters(net) / 1e6:.2f} M parameters; {cfg.steps} steps of {cfg.batch} x {cfg.crop}^2 on "
        f"{device}{' (bfloat16 autocast)' if cfg.bf16 else ''}; data drawn {'in a second process' if cfg.workers else 'in-process'}"
    )
    decay = [p for n, p in net.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in net.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
    )
    losses: list[float] = []
    running: dict[str, float] = {}
    t_train = time.perf_counter()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        batch = to_tensors(next(data), device)
        loss, parts = loss_terms(net, batch, cfg.loss_weights, cfg.bf16)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        losses.append(loss.item())
        for k, v in parts.items():
            running[k] = running.get(k, v) * 0.9 + v * 0.1
        if log_every and ((step + 1) % log_every == 0 or step + 1 == cfg.steps):
            done = step + 1
            el = time.perf_counter() - t_train
            eta = el / done * (cfg.steps - done)
            bar = "#" * int(30 * done / cfg.steps)
            log(
                f"[{bar:<30}] step {done}/{cfg.steps} loss {np.mean(losses[-log_every:]):.4f} "
                + " ".join(f"{k} {v:.4f}" for k, v in running.items())
                + f" lr {lr_at(step, cfg):.2e} {el / 60:.1f} min, eta {eta / 60:.1f} min"
            )
    data.close()
    seconds = time.perf_counter() - t0
    net.eval()
    validation = validate(net, cfg.seed, table, data_config) if validate_at_end else {}
    return TrainResult(net, losses, seconds, table, validation)


def fit_brisque(
    seed: int, table: D.SeverityTable, data_config: D.DataConfig, n: int = 1500, log=print
) -> dict:
    """Fit the BRISQUE-style baseline on samples of the same recipe (a seed training never uses)."""
    from .baselines import brisque_features, fit_ridge

    t0 = time.perf_counter()
    stream = D.SampleStream(seed + 20_000, D.DataConfig(**{**data_config.to_dict(), "pool": 96}), table=table)
    feats, scores = [], []
    for _ in range(n):
        s = stream.sample(256)
        feats.append(brisque_features(s.image))
        scores.append(D.score_from_damage(s.damage))
    fit = fit_ridge(np.asarray(feats), np.asarray(scores))
    log(f"BRISQUE-style baseline fitted on {n} samples in {time.perf_counter() - t0:.0f} s")
    return {"samples": n, "seed": seed + 20_000, "ridge": fit.to_dict()}


def card(
    cfg: TrainConfig, data_config: D.DataConfig, result: TrainResult, command: str, figures: dict | None
) -> dict:
    return {
        "name": "q-deepsight learned critic",
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "seed": cfg.seed,
        "train": {k: v for k, v in asdict(cfg).items()},
        "parameters": count_parameters(result.net),
        "net": json.loads(result.net.config.to_json()),
        "types": list(TYPES),
        "map_stride": MAP_STRIDE,
        "data": {
            "recipe": data_config.to_dict(),
            "scenes": {k: w for k, (_, w) in D.SCENES.items()},
            "shipped_images": list(D.TRAIN_SHIPPED),
            "held_out": sorted(D.HELD_OUT),
            "held_out_rule": (
                "the network never sees a benchmark image: training uses only scenes synthesized by "
                "assessor/learned/data.py (own seeds) and shipped images outside benchdata.PHOTOS and "
                "benchdata.EXTRA_CLEAN and their near-duplicates (asserted when the data module is imported)"
            ),
            "degradations": "assessor.degrade.apply_distortion, levels uniform in [1, 5], global (40%) or in "
            "random boxes / ellipses / polygons / blobs with hard or feathered edges; 1-3 at once; "
            "JPEG grid at a random phase; 30% clean (55% for hard negatives)",
            "severity_table": result.table.to_dict(),
        },
        "training": {
            "seconds": round(result.seconds, 1),
            "minutes": round(result.seconds / 60.0, 1),
            "device": str(cfg.device),
            "threads": cfg.threads,
            "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "final_loss": round(float(np.mean(result.losses[-50:])), 4) if result.losses else None,
            "first_loss": round(float(np.mean(result.losses[:10])), 4) if result.losses else None,
        },
        "validation_synthetic": result.validation,
        "figures": figures or {},
    }


def _figures(res: dict) -> dict:
    keys = (
        "per_type_spearman_mean",
        "per_type_spearman_per_photo_mean",
        "ssim_spearman",
        "local_hit",
        "local_type",
        "clean_false_alarm",
    )
    figures = {k: round(float(res[k]), 4) for k in keys}
    figures["per_type_spearman"] = {k: round(float(v), 4) for k, v in res["per_type_spearman"].items()}
    figures["counts"] = res["counts"]
    return figures


def _benchmark_figures(weights: Path, baseline: Path, log) -> dict:
    from .. import benchmark
    from .baselines import BrisqueAssessor
    from .critic import LearnedAssessor

    log("benchmark on held-out photos (as python -m assessor.benchmark --backend learned / brisque) ...")
    figures = _figures(benchmark.evaluate(LearnedAssessor(weights=weights, device="cpu")))
    figures["brisque_baseline"] = _figures(benchmark.evaluate(BrisqueAssessor(fit=baseline)))
    return figures


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="python -m assessor.train_embedded",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: python -m assessor.train_embedded            (the shipped weights: CPU, ~35 min on 2 cores)\n"
        "         python -m assessor.train_embedded --device cuda --out /tmp/critic.safetensors",
    )
    p.add_argument(
        "--seed", type=int, default=d.seed, help=f"seed of data and initialization (default {d.seed})"
    )
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps (default {d.steps})")
    p.add_argument("--batch", type=int, default=d.batch, help=f"crops per step (default {d.batch})")
    p.add_argument("--crop", type=int, default=d.crop, help=f"crop side, a multiple of 32 (default {d.crop})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr})")
    p.add_argument(
        "--threads",
        type=int,
        default=d.threads,
        help="CPU threads for torch (default 1: on a shared machine more threads wait on each other)",
    )
    p.add_argument("--device", default="cpu", help="cpu (default, reproducible) or cuda")
    p.add_argument("--fp32", action="store_true", help="no bfloat16 autocast (about 1.7x slower on a CPU)")
    p.add_argument(
        "--workers",
        type=int,
        default=d.workers,
        choices=(0, 1),
        help="1 (default): draw data in a second process; 0: in-process (same batches)",
    )
    p.add_argument(
        "--out", type=Path, default=DEFAULT_WEIGHTS, help="weights file to write (default: the package's)"
    )
    p.add_argument("--card", type=Path, help="JSON card to write (default: next to --out, .json)")
    p.add_argument("--no-benchmark", action="store_true", help="skip the benchmark figures in the card")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.crop % 32 or args.crop < 64:
        print("error: --crop must be a multiple of 32 and at least 64", file=sys.stderr)
        return 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda asked for, but torch sees no CUDA GPU; use --device cpu", file=sys.stderr)
        return 2
    cfg = TrainConfig(
        seed=args.seed,
        steps=args.steps,
        batch=args.batch,
        crop=args.crop,
        lr=args.lr,
        threads=args.threads,
        device=args.device,
        bf16=not args.fp32,
        workers=args.workers,
    )
    data_config = D.DataConfig(crop=args.crop)
    card_path = args.card or args.out.with_suffix(".json")
    command = "python -m assessor.train_embedded" + (
        ""
        if argv is None and len(sys.argv) <= 1
        else " " + shlex.join(sys.argv[1:] if argv is None else argv)
    )

    def log(msg: str) -> None:
        print(msg, flush=True)

    result = train(cfg, data_config, log=log)
    log(f"trained in {result.seconds / 60:.1f} min; synthetic validation: {result.validation}")
    save_weights(result.net, args.out, {"seed": cfg.seed, "steps": cfg.steps})
    log(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB)")
    baseline_path = args.out.with_name(args.out.stem + ".brisque.json")
    from ..imageio import write_text_atomic

    write_text_atomic(
        json.dumps(fit_brisque(cfg.seed, result.table, data_config, log=log)) + "\n", baseline_path
    )
    log(f"wrote {baseline_path}")
    figures = None if args.no_benchmark else _benchmark_figures(args.out, baseline_path, log)
    write_text_atomic(
        json.dumps(card(cfg, data_config, result, command, figures), indent=2) + "\n", card_path
    )
    log(f"wrote {card_path}")
    if figures:
        log("figures: " + json.dumps({k: v for k, v in figures.items() if not isinstance(v, dict)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
