"""GRPO over iMCoT tool trajectories, with PCR rewards and EGF token weights, on accelerate.

One step, on every process:

1. draw this step's images (coarse-to-fine curriculum, the same draw on every process; each
   takes its slice) and read them (unreadable ones are replaced and counted);
2. roll out G trajectories per image with the inference loop (sampling, tool calls executed,
   crops inserted), the model in eval mode, no gradient;
3. probe the rating distribution at the start of every model turn (EGF) and score each
   trajectory (PCR); group-normalise the rewards into advantages;
4. re-encode the trajectories, recompute the policy's log-probabilities on its own tokens only
   and take ``grpo.iterations`` clipped policy-gradient updates (micro-batched, gradients
   accumulated, synchronised once per update);
5. log (JSONL + console) and checkpoint.

Every random choice is seeded from (seed, step, process), so a run resumed from a checkpoint
continues exactly as the uninterrupted run would have (weights, optimizer, scheduler and step
come from the checkpoint).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..imageio import ImageError, check_image_size
from ..vlm.loop import LoopConfig, Trajectory
from ..vlm.prompts import get_prompt_style
from . import egf as egf_mod
from . import pcr
from .config import TrainConfig, config_to_yaml
from .data import IQADataset, IQASample, load_datasets, read_rgb
from .grpo import group_advantages, per_token_loss, token_scales
from .lora import adapters_disabled, add_lora, merged_state_dict, save_adapter
from .rollout import rating_probes, trajectory_logps

LOG_NAME = "train_log.jsonl"
STATE_NAME = "trainer_state.json"
TRAINABLE_NAME = "model.safetensors"


def step_seed(seed: int, step: int, rank: int, stream: int = 0) -> int:
    return int(np.random.SeedSequence([seed, step, rank, stream]).generate_state(1)[0])


def seed_everything(value: int) -> None:
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


def lr_lambda(config, total_steps: int) -> Callable[[int], float]:
    warmup = config.warmup_steps

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if config.lr_schedule == "constant":
            return 1.0
        t = (step - warmup) / max(1, total_steps - warmup)
        t = min(1.0, max(0.0, t))
        return 1.0 - t if config.lr_schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * t))

    return f


@dataclass
class Sample:
    """One trajectory of the step with everything the loss needs."""

    traj: Trajectory
    group: int
    mos: float
    pred: float | None
    reward: pcr.RewardParts | None = None
    advantage: float = 0.0
    evidence: egf_mod.Evidence | None = None
    targets: np.ndarray = field(
        default_factory=lambda: np.zeros(0, dtype=np.int64)
    )  # token indices in the loss
    weights: np.ndarray = field(default_factory=lambda: np.zeros(0))  # EGF weight per target
    old_logps: torch.Tensor | None = None
    ref_logps: torch.Tensor | None = None


class JsonlLog:
    def __init__(self, path: Path, enabled: bool):
        self.path = path
        self.enabled = enabled

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def truncate_after(self, step: int) -> None:
        """On resume: drop records of steps after the checkpoint (they will be redone)."""
        if not self.enabled or not self.path.is_file():
            return
        keep = [
            line
            for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= step
        ]
        self.path.write_text("".join(line + "\n" for line in keep))


class GRPOTrainer:
    """Trains a Qwen2.5-VL critic with GRPO; ``config`` says everything (see config.py).

    ``model``/``processor`` may be given already loaded (tests, the toy); ``datasets`` likewise.
    ``logits_processors`` go to the rollout transport (tests force scripted trajectories);
    ``token_filter(traj)`` may narrow the tokens that carry gradient (a bool mask over the
    trajectory's tokens, intersected with the policy mask).
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        model=None,
        processor=None,
        datasets: Sequence[IQADataset] | None = None,
        logits_processors: Sequence = (),
        token_filter: Callable[[Trajectory], np.ndarray] | None = None,
        accelerator=None,
        quiet: bool = False,
    ):
        from accelerate import Accelerator
        from accelerate.utils import DistributedType

        self.config = config
        # cpu=True without CUDA: torchrun/accelerate launch then use gloo processes (tests, CPU boxes)
        self.accelerator = accelerator or Accelerator(
            cpu=not torch.cuda.is_available(), step_scheduler_with_optimizer=False
        )
        acc = self.accelerator
        self.quiet = quiet or not acc.is_main_process
        self.token_filter = token_filter
        self.output_dir = Path(config.output_dir)
        seed_everything(config.seed)

        self.datasets = (
            list(datasets)
            if datasets is not None
            else load_datasets(config.data.train, config.data.check_images)
        )
        self.samples: list[IQASample] = [s for d in self.datasets for s in d.samples]
        if not self.samples:
            raise ValueError("no training images: add datasets under data.train")
        self.mos = np.array([s.mos for s in self.samples], dtype=np.float64)
        for d in self.datasets:
            self.say(d.summary())

        if model is None:
            from ..vlm.hf import load_model_and_processor

            model, processor = load_model_and_processor(
                config.model.path,
                device=str(acc.device),
                dtype=config.model.dtype,
                attn_implementation=config.model.attn_implementation,
                trust_remote_code=config.model.trust_remote_code,
            )
        elif processor is None:
            raise ValueError("pass the processor together with a loaded model")
        self.processor = processor
        self.tokenizer = processor.tokenizer
        model = model.to(acc.device)
        self.ref_model = None
        if config.model.finetune == "lora":
            self.lora_names = add_lora(model, config.lora, seed=config.seed)
        else:
            self.lora_names = []
            for name, p in model.named_parameters():
                p.requires_grad_(not (config.model.freeze_vision and ".visual." in f".{name}."))
            if config.grpo.kl_beta > 0:
                import copy

                self.ref_model = copy.deepcopy(model).eval()
                for p in self.ref_model.parameters():
                    p.requires_grad_(False)
        if config.model.gradient_checkpointing:
            kwargs = {"use_reentrant": False}  # frozen inputs (LoRA) need the non-reentrant variant
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
                model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        self.trainable_names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = [p for p in model.parameters() if p.requires_grad]
        g = config.grpo
        optimizer = torch.optim.AdamW(
            params, lr=g.learning_rate, betas=tuple(g.adam_betas), weight_decay=g.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(g, g.steps))
        r = config.rollout
        # one optimizer step per update: its micro-batches accumulate (see update())
        acc.gradient_accumulation_steps = math.ceil(r.images_per_device * r.group_size / g.micro_batch)
        if acc.distributed_type == DistributedType.DEEPSPEED:  # no dataloader to read these from
            ds_config = acc.state.deepspeed_plugin.deepspeed_config
            ds_config["train_micro_batch_size_per_gpu"] = g.micro_batch
            ds_config["gradient_accumulation_steps"] = acc.gradient_accumulation_steps
            if ds_config.get("gradient_clipping", "auto") == "auto":
                ds_config["gradient_clipping"] = g.max_grad_norm
            if self.ref_model is not None and acc.state.deepspeed_plugin.zero_stage == 3:
                raise ValueError(
                    "full fine-tuning with kl_beta > 0 keeps an unsharded reference copy, which ZeRO-3 "
                    "cannot hold; use LoRA (its reference is the base model) or grpo.kl_beta: 0"
                )
        self.model, self.optimizer, self.scheduler = acc.prepare(model, optimizer, scheduler)
        acc.register_save_state_pre_hook(self._save_hook)
        acc.register_load_state_pre_hook(self._load_hook)

        from ..vlm.hf import VLMAssessor

        self.assessor = VLMAssessor(
            self.unwrapped,
            processor=processor,
            min_pixels=config.model.min_pixels,
            max_pixels=config.model.max_pixels,
            batch_size=max(r.generation_batch, r.group_size),
            logits_processors=list(logits_processors),
            record_rating_probs=True,
        )
        self.transport = self.assessor.transport
        self.step = 0
        self.corrupt = 0
        n_train = sum(p.numel() for p in params)
        n_all = sum(p.numel() for p in self.unwrapped.parameters())
        self.say(
            f"model: {n_all / 1e6:.1f} M parameters, {n_train / 1e6:.2f} M trained "
            f"({config.model.finetune}{', ' + str(len(self.lora_names)) + ' LoRA layers' if self.lora_names else ''}); "
            f"{acc.num_processes} process(es) on {acc.device}"
        )

    # -- small helpers --------------------------------------------------------------------------

    @property
    def unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, flush=True)

    def loop_config(self, seed: int) -> LoopConfig:
        r = self.config.rollout
        return LoopConfig(
            prompt_style=r.prompt_style,
            max_turns=r.max_turns,
            max_crops=r.max_crops,
            max_new_tokens=r.max_new_tokens,
            crop_size=r.crop_size,
            coordinates=r.coordinates,
            samples=r.group_size,
            do_sample=True,
            temperature=r.temperature,
            top_p=r.top_p,
            seed=seed,
            record_rating_probs=True,
        )

    @contextlib.contextmanager
    def generation_context(self):
        """The model as ``generate`` needs it: eval mode, full parameters (FSDP, ZeRO-3 gather)."""
        from accelerate.utils import DistributedType

        acc = self.accelerator
        model = self.unwrapped
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                if (
                    acc.distributed_type == DistributedType.DEEPSPEED
                    and getattr(acc.state.deepspeed_plugin, "zero_stage", 0) == 3
                ):
                    import deepspeed

                    with deepspeed.zero.GatheredParameters(list(self.model.parameters())):
                        yield model
                elif acc.distributed_type == DistributedType.FSDP and not getattr(acc, "is_fsdp2", False):
                    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

                    with FSDP.summon_full_params(self.model, recurse=False, writeback=False):
                        yield model
                else:
                    yield model
        finally:
            model.train(was_training)

    # -- data -----------------------------------------------------------------------------------

    def progress(self, step: int) -> float:
        return step / max(1, self.config.grpo.steps)

    def step_images(self, step: int) -> tuple[list[np.ndarray], list[float], list[int]]:
        """This process's images for ``step`` (coarse-to-fine draw; unreadable ones replaced)."""
        acc = self.accelerator
        per = self.config.rollout.images_per_device
        window = pcr.window_at(self.config.pcr, self.progress(step))
        rng = np.random.default_rng([self.config.seed, step])
        picked = pcr.curriculum_batch(self.mos, per * acc.num_processes, window, rng)
        mine = picked[acc.process_index * per : (acc.process_index + 1) * per]
        spare = list(
            np.random.default_rng([self.config.seed, step, 1 + acc.process_index]).permutation(
                len(self.samples)
            )
        )
        images, mos, index = [], [], []
        for k in mine:
            while True:
                sample = self.samples[k]
                try:
                    rgb = read_rgb(sample.path, self.config.data.max_side)
                    check_image_size(rgb, sample.path)
                    images.append(rgb)
                    break
                except (ImageError, OSError, ValueError) as exc:
                    self.corrupt += 1
                    if self.corrupt <= 5:
                        self.say(f"skipping unreadable image {sample.path}: {exc}")
                    if not spare:
                        raise RuntimeError("every candidate image was unreadable") from exc
                    k = int(spare.pop())
            mos.append(sample.mos)
            index.append(k)
        return images, mos, index

    # -- one step -------------------------------------------------------------------------------

    def rollout(self, images: list[np.ndarray], mos: list[float], seed: int) -> list[list[Sample]]:
        with self.generation_context():
            results = self.assessor.assess_results(images, config=self.loop_config(seed))
        groups = []
        for i, result in enumerate(results):
            trajs = result.trajectories
            if len(trajs) != self.config.rollout.group_size:  # a transport failure, not a model output
                raise RuntimeError(f"the rollouts of image {i} of step {self.step} failed: {result.error}")
            group = []
            for t in trajs:
                pred = float(t.diagnosis.score) if t.diagnosis is not None else None
                group.append(Sample(t, i, mos[i], pred))
            groups.append(group)
        return groups

    def probe(self, groups: list[list[Sample]]) -> int:
        """EGF beliefs at the start of every model turn; identical prefixes are probed once."""
        requests: list[tuple[Trajectory, int]] = []
        keys: dict[tuple[int, bytes], int] = {}
        plan: list[tuple[Sample, list[int]]] = []
        for group in groups:
            for s in group:
                slots = []
                for turn in egf_mod.model_turns(s.traj):
                    key = (s.group, np.asarray(s.traj.token_ids[: turn.start], dtype=np.int64).tobytes())
                    if key not in keys:
                        keys[key] = len(requests)
                        requests.append((s.traj, turn.start))
                    slots.append(keys[key])
                plan.append((s, slots))
        if not requests:
            return 0
        prefix = get_prompt_style(self.config.rollout.prompt_style).probe_prefix
        with self.generation_context() as model:
            probs = rating_probes(model, self.transport, requests, prefix, self.config.egf.probe_batch)
        beliefs = [egf_mod.expected_score(p) for p in probs]
        for s, slots in plan:
            s.evidence = egf_mod.evidence(s.traj, [beliefs[k] for k in slots], s.mos)
        return len(requests)

    def score(self, groups: list[list[Sample]], progress: float) -> None:
        cfg = self.config.pcr
        tau = pcr.tau_at(cfg, progress)
        formats = get_prompt_style(self.config.rollout.prompt_style).answer_formats
        live = [g for g in groups if g]
        ranks = (
            pcr.ranking_rewards([[s.pred for s in g] for g in live], [g[0].mos for g in live], cfg.rank_eps)
            if cfg.w_rank > 0
            else None
        )
        for gi, group in enumerate(live):
            for j, s in enumerate(group):
                t = s.traj
                answered = t.diagnosis is not None
                clean = (
                    answered
                    and t.answer is not None
                    and t.answer.format in formats
                    and not any(st.data.get("errors") or st.data.get("repairs") for st in t.steps)
                )
                r_score = pcr.score_reward(s.pred, s.mos, tau)
                r_format = pcr.format_reward(answered, clean, cfg.format_partial)
                best = s.evidence.best_zoom_gain if s.evidence is not None else None
                r_tool = pcr.tool_reward(len(t.zooms), r_score, best, cfg, self.config.egf.min_gain)
                r_rank = ranks[gi][j] if ranks is not None else 0.0
                s.reward = pcr.combine(cfg, r_score, r_format, r_tool, r_rank)
            adv = group_advantages(
                np.array([[s.reward.total for s in group]]), self.config.grpo.scale_rewards
            )[0]
            for s, a in zip(group, adv):
                s.advantage = float(a)

    def prepare_targets(self, groups: list[list[Sample]]) -> None:
        decode = self.tokenizer.decode
        for group in groups:
            for s in group:
                t = s.traj
                mask = t.token_masks().policy.copy()
                if self.token_filter is not None:
                    mask &= np.asarray(self.token_filter(t), dtype=bool)
                mask[:1] = False  # the first token has nothing to be predicted from
                weights = egf_mod.token_weights(
                    t, s.evidence, s.advantage, self.config.egf, lambda i: decode([i])
                )
                s.targets = np.flatnonzero(mask)
                s.weights = weights[s.targets]

    def _micro_batches(self, samples: list[Sample]) -> list[list[Sample]]:
        k = self.config.grpo.micro_batch
        return [samples[i : i + k] for i in range(0, len(samples), k)]

    def _encode(self, samples: list[Sample]) -> list[dict[str, Any]]:
        from .rollout import encode

        return [encode(self.transport, s.traj) for s in samples]

    def _targets_or_dummy(self, s: Sample) -> np.ndarray:
        # a trajectory without loss tokens still runs forward (every process must run the same
        # micro-batches for the gradient sync); its dummy token gets zero weight
        return s.targets if len(s.targets) else np.array([len(s.traj.token_ids) - 1], dtype=np.int64)

    @torch.no_grad()
    def _logps(self, model, samples: list[Sample], encoded: list[dict[str, Any]]) -> list[torch.Tensor]:
        """Detached per-target log-probs of every sample under ``model``, micro-batch by micro-batch."""
        temperature = self.config.rollout.temperature
        logps: list[torch.Tensor] = []
        for mb in self._micro_batches(list(range(len(samples)))):
            out = trajectory_logps(
                model,
                self.transport,
                [encoded[i] for i in mb],
                [self._targets_or_dummy(samples[i]) for i in mb],
                temperature,
            )
            logps.extend(lp.detach() for lp in out)
        return logps

    @torch.no_grad()
    def reference_logps(self, samples: list[Sample], encoded: list[dict[str, Any]]) -> None:
        with self.generation_context() as model:
            ref = self.ref_model if self.ref_model is not None else model
            ctx = adapters_disabled(model) if self.ref_model is None else contextlib.nullcontext()
            with ctx:
                for s, lp in zip(samples, self._logps(ref, samples, encoded)):
                    s.ref_logps = lp

    @torch.no_grad()
    def old_logps(self, samples: list[Sample], encoded: list[dict[str, Any]]) -> None:
        self.unwrapped.train()
        for s, lp in zip(samples, self._logps(self.model, samples, encoded)):
            s.old_logps = lp

    def update(self, samples: list[Sample], encoded: list[dict[str, Any]]) -> dict[str, float]:
        """``grpo.iterations`` optimizer steps on this batch; returns loss statistics.

        The micro-batches of one update run under ``accelerator.accumulate``: gradients are
        synchronised (DDP/FSDP) or accumulated (DeepSpeed) once per update. accelerate divides each
        micro-batch loss by their number; the loss here is already normalised over the whole step,
        so that division is undone."""
        acc = self.accelerator
        g = self.config.grpo
        temperature = self.config.rollout.temperature
        counts = torch.tensor(
            [float(sum(len(s.targets) for s in samples)), float(sum(1 for s in samples if len(s.targets)))],
            device=acc.device,
        )
        counts = acc.reduce(counts, reduction="sum")
        total_tokens, total_seqs = int(counts[0]), int(counts[1])
        scales = token_scales([len(s.targets) for s in samples], g.loss_type, total_tokens, total_seqs)
        # DDP averages gradients over processes, accelerate divides by the micro-batch count
        factor = acc.num_processes * acc.gradient_accumulation_steps
        batches = self._micro_batches(list(range(len(samples))))
        if len(batches) != acc.gradient_accumulation_steps:
            raise RuntimeError(
                f"{len(batches)} micro-batches but gradient_accumulation_steps={acc.gradient_accumulation_steps}"
            )
        stats = {"loss": 0.0, "kl": 0.0, "clip_frac": 0.0, "ratio": 0.0, "grad_norm": 0.0}
        tokens_seen = 0
        self.unwrapped.train()
        self.optimizer.zero_grad(set_to_none=True)
        for _ in range(g.iterations):
            for mb in batches:
                with acc.accumulate(self.model):
                    targets = [self._targets_or_dummy(samples[i]) for i in mb]
                    logps = trajectory_logps(
                        self.model, self.transport, [encoded[i] for i in mb], targets, temperature
                    )
                    loss = torch.zeros((), device=acc.device)
                    for i, lp in zip(mb, logps):
                        s = samples[i]
                        n = len(s.targets)
                        adv = torch.full_like(lp, s.advantage)
                        w = (
                            torch.as_tensor(s.weights, dtype=lp.dtype, device=lp.device)
                            if n
                            else torch.zeros_like(lp)
                        )
                        per_tok, st = per_token_loss(
                            lp,
                            adv,
                            old_logp=s.old_logps,
                            ref_logp=s.ref_logps,
                            weights=w,
                            clip_low=g.clip_low,
                            clip_high=g.clip_high,
                            beta=g.kl_beta,
                        )
                        if n == 0:
                            per_tok = per_tok * 0.0
                        loss = loss + per_tok.sum() * scales[i]
                        stats["kl"] += st.kl * n
                        stats["clip_frac"] += st.clipped * n
                        stats["ratio"] += st.ratio * n
                        tokens_seen += n
                    acc.backward(loss * factor)
                    stats["loss"] += float(loss.detach())
                    if acc.sync_gradients:
                        if g.max_grad_norm and g.max_grad_norm > 0:
                            norm = acc.clip_grad_norm_(
                                [p for p in self.model.parameters() if p.requires_grad], g.max_grad_norm
                            )
                            if norm is not None:
                                stats["grad_norm"] += float(norm) / g.iterations
                        self.optimizer.step()
                        self.scheduler.step()
                        self.optimizer.zero_grad(set_to_none=True)
        keys = ["loss", "kl", "clip_frac", "ratio"]
        totals = acc.reduce(
            torch.tensor(
                [stats[k] for k in keys] + [float(tokens_seen)], dtype=torch.float64, device=acc.device
            ),
            "sum",
        ).tolist()
        out = {"loss": totals[0] / g.iterations, "grad_norm": stats["grad_norm"]}
        for k, v in zip(keys[1:], totals[1:4]):
            out[k] = v / max(1.0, totals[4])
        return out

    def train_step(self) -> dict[str, Any]:
        acc = self.accelerator
        step = self.step
        t0 = time.perf_counter()
        seed_everything(step_seed(self.config.seed, step, acc.process_index))
        progress = self.progress(step)
        images, mos, _ = self.step_images(step)
        groups = self.rollout(images, mos, step_seed(self.config.seed, step, acc.process_index, 1))
        t1 = time.perf_counter()
        probes = 0
        if self.config.egf.enabled or self.config.pcr.w_tool > 0:
            probes = self.probe(groups)
        t2 = time.perf_counter()
        self.score(groups, progress)
        self.prepare_targets(groups)
        samples = [s for g in groups for s in g]
        encoded = self._encode(samples)
        if self.config.grpo.kl_beta > 0:
            self.reference_logps(samples, encoded)
        if self.config.grpo.iterations > 1:
            self.old_logps(samples, encoded)
        seed_everything(step_seed(self.config.seed, step, acc.process_index, 2))  # dropout in the update
        loss_stats = self.update(samples, encoded)
        t3 = time.perf_counter()
        self.step += 1
        record = self.metrics(groups, samples, loss_stats, progress, probes)
        record.update(rollout_s=round(t1 - t0, 3), probe_s=round(t2 - t1, 3), update_s=round(t3 - t2, 3))
        record["step_s"] = round(time.perf_counter() - t0, 3)
        return record

    # -- logging --------------------------------------------------------------------------------

    def metrics(
        self, groups, samples: list[Sample], loss_stats: dict[str, float], progress: float, probes: int
    ) -> dict[str, Any]:
        acc = self.accelerator
        answered = [s for s in samples if s.pred is not None]
        zoom_gains = [g for s in samples if s.evidence is not None for g in s.evidence.zoom_gains]
        filt_w = [float(np.mean(s.weights)) for s in samples if len(s.weights)]
        stds = [float(np.std([s.reward.total for s in g])) for g in groups if g]
        sums = {
            "reward": sum(s.reward.total for s in samples),
            "r_score": sum(s.reward.score for s in samples),
            "r_format": sum(s.reward.format for s in samples),
            "r_tool": sum(s.reward.tool for s in samples),
            "r_rank": sum(s.reward.rank for s in samples),
            "answered": float(len(answered)),
            "zoom_rate": float(sum(1 for s in samples if s.traj.zooms)),
            "zooms": float(sum(len(s.traj.zooms) for s in samples)),
            "turns": float(sum(s.traj.turns for s in samples)),
            "policy_tokens": float(sum(int(s.traj.token_masks().policy.sum()) for s in samples)),
            "seq_tokens": float(sum(len(s.traj.token_ids) for s in samples)),
            "n": float(len(samples)),
            "abs_err": sum(abs(s.pred - s.mos) for s in answered),
            "n_answered": float(len(answered)),
            "gain": float(sum(zoom_gains)),
            "n_gain": float(len(zoom_gains)),
            "egf_w": float(sum(filt_w)),
            "n_egf": float(len(filt_w)),
            "group_std": float(sum(stds)),
            "zero_std": float(sum(1 for x in stds if x < 1e-9)),
            "n_groups": float(len(stds)),
            "probes": float(probes),
        }
        keys = list(sums)
        totals = acc.reduce(
            torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=acc.device), "sum"
        )
        t = dict(zip(keys, totals.tolist()))
        n = max(1.0, t["n"])
        rec: dict[str, Any] = {
            "step": self.step,
            "progress": round(progress, 4),
            "tau": round(pcr.tau_at(self.config.pcr, progress), 4),
            "window": round(pcr.window_at(self.config.pcr, progress), 4),
            "lr": self.scheduler.get_last_lr()[0],
            "reward": t["reward"] / n,
            "reward_group_std": t["group_std"] / max(1.0, t["n_groups"]),
            "frac_zero_std": t["zero_std"] / max(1.0, t["n_groups"]),
            "r_score": t["r_score"] / n,
            "r_format": t["r_format"] / n,
            "r_tool": t["r_tool"] / n,
            "r_rank": t["r_rank"] / n,
            "answered": t["answered"] / n,
            "mae": t["abs_err"] / t["n_answered"] if t["n_answered"] else None,
            "tool_call_rate": t["zoom_rate"] / n,
            "zooms_per_traj": t["zooms"] / n,
            "turns_per_traj": t["turns"] / n,
            "policy_tokens": t["policy_tokens"] / n,
            "seq_tokens": t["seq_tokens"] / n,
            "zoom_gain": t["gain"] / t["n_gain"] if t["n_gain"] else None,
            "egf_weight": t["egf_w"] / t["n_egf"] if t["n_egf"] else None,
            "probes": int(t["probes"]),
            "trajectories": int(t["n"]),
            "corrupt_skipped": self.corrupt,
        }
        rec.update({k: round(v, 6) for k, v in loss_stats.items()})
        for k, v in list(rec.items()):
            if isinstance(v, float):
                rec[k] = round(v, 6)
        return rec

    def console(self, rec: dict[str, Any]) -> str:
        mae = f"{rec['mae']:.2f}" if rec["mae"] is not None else "-"
        rank = f" rank {rec['r_rank']:.2f}" if self.config.pcr.w_rank else ""
        return (
            f"step {rec['step']}/{self.config.grpo.steps}  reward {rec['reward']:.3f} "
            f"(score {rec['r_score']:.2f} fmt {rec['r_format']:.2f} tool {rec['r_tool']:.2f}"
            f"{rank})  mae {mae}  "
            f"zoom {100 * rec['tool_call_rate']:.0f}%  tokens {rec['policy_tokens']:.0f}  "
            f"kl {rec['kl']:.4f}  clip {100 * rec['clip_frac']:.1f}%  tau {rec['tau']:.2f}  "
            f"lr {rec['lr']:.2e}  {rec['step_s']:.1f} s"
        )

    # -- checkpoints ----------------------------------------------------------------------------

    def _save_hook(self, models, weights, output_dir) -> None:
        """Checkpoint only the trained parameters (LoRA: a few MB instead of the whole model)."""
        for i, model in enumerate(models):
            if i < len(weights):
                net = self.accelerator.unwrap_model(model)
                named = dict(net.named_parameters())
                weights[i] = {n: named[n].detach().contiguous() for n in self.trainable_names}

    def _load_hook(self, models, input_dir) -> None:
        from safetensors.torch import load_file

        for i, model in enumerate(list(models)):
            name = TRAINABLE_NAME if i == 0 else TRAINABLE_NAME.replace(".", f"_{i}.")
            path = Path(input_dir) / name
            if not path.is_file():
                raise FileNotFoundError(f"{input_dir}: no {name}; not a checkpoint of this trainer")
            state = load_file(str(path))
            missing = sorted(set(self.trainable_names) - set(state))
            if missing:
                raise KeyError(
                    f"{path}: the checkpoint lacks {len(missing)} trained tensors (e.g. {missing[0]}); was it made with another finetune/lora config?"
                )
            net = self.accelerator.unwrap_model(model)
            named = dict(net.named_parameters())
            with torch.no_grad():
                for n in self.trainable_names:
                    named[n].copy_(state[n].to(named[n].device, named[n].dtype))
        models.clear()  # loaded here; accelerate must not load (or expect) a full state dict

    def checkpoint_dir(self, step: int) -> Path:
        return self.output_dir / "checkpoints" / f"step-{step:07d}"

    def save_checkpoint(self) -> Path:
        acc = self.accelerator
        path = self.checkpoint_dir(self.step)
        acc.wait_for_everyone()
        acc.save_state(str(path))
        state = acc.get_state_dict(self.model) if self.lora_names else None  # gathers FSDP/ZeRO-3 shards
        if acc.is_main_process and state is not None:
            save_adapter(state, path / "adapter", self.config.lora, self.config.model.path)
        if acc.is_main_process:
            state = {"step": self.step, "corrupt_skipped": self.corrupt, "config": self.config.to_dict()}
            (path / STATE_NAME).write_text(json.dumps(state, indent=2) + "\n")
            checkpoints = sorted((self.output_dir / "checkpoints").glob("step-*"))
            for old in checkpoints[: max(0, len(checkpoints) - self.config.keep_checkpoints)]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return path

    def latest_checkpoint(self) -> Path | None:
        found = sorted((self.output_dir / "checkpoints").glob("step-*"))
        found = [p for p in found if (p / STATE_NAME).is_file()]
        return found[-1] if found else None

    def resume(self, path: str | Path) -> int:
        path = Path(path)
        if not (path / STATE_NAME).is_file():
            raise FileNotFoundError(
                f"{path} is not a checkpoint (no {STATE_NAME}); pass a checkpoints/step-N folder"
            )
        state = json.loads((path / STATE_NAME).read_text())
        self.accelerator.load_state(str(path))
        self.step = int(state["step"])
        self.corrupt = int(state.get("corrupt_skipped", 0))
        return self.step

    def save_final(self) -> Path:
        """``final/``: the LoRA adapter (peft format) or the full model, with the processor; with
        ``export_merged``, also ``final/merged`` (a plain checkpoint for ``--backend vlm --model``)."""
        acc = self.accelerator
        acc.wait_for_everyone()
        out = self.output_dir / "final"
        state = acc.get_state_dict(self.model)  # full tensors on the main process, whatever the sharding
        if acc.is_main_process:
            if self.lora_names:
                save_adapter(state, out / "adapter", self.config.lora, self.config.model.path)
                self.processor.save_pretrained(out / "adapter")
                if self.config.export_merged:
                    merged = merged_state_dict(state, self.config.lora)
                    self.unwrapped.save_pretrained(out / "merged", state_dict=merged, safe_serialization=True)
                    self.processor.save_pretrained(out / "merged")
            else:
                self.unwrapped.save_pretrained(out / "model", state_dict=state, safe_serialization=True)
                self.processor.save_pretrained(out / "model")
        acc.wait_for_everyone()
        return out

    # -- the loop -------------------------------------------------------------------------------

    def train(self, resume: str | Path | None = None, max_steps: int | None = None) -> list[dict[str, Any]]:
        """Run until ``grpo.steps`` (or ``max_steps`` more steps); ``resume``: a checkpoint folder
        or "auto" (the latest in output_dir, if any)."""
        acc = self.accelerator
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.yaml").write_text(config_to_yaml(self.config))
        log = JsonlLog(self.output_dir / LOG_NAME, acc.is_main_process)
        if resume == "auto":
            resume = self.latest_checkpoint()
        if resume:
            self.resume(resume)
            log.truncate_after(self.step)
            self.say(f"resumed from {resume} at step {self.step}")
        elif acc.is_main_process and log.path.exists():
            log.path.unlink()
        end = (
            self.config.grpo.steps
            if max_steps is None
            else min(self.config.grpo.steps, self.step + max_steps)
        )
        records = []
        while self.step < end:
            rec = self.train_step()
            records.append(rec)
            log.write(rec)
            if self.step % max(1, self.config.log_every) == 0 or self.step == end:
                self.say(self.console(rec))
            if self.config.save_every and (
                self.step % self.config.save_every == 0 or self.step == self.config.grpo.steps
            ):
                self.save_checkpoint()
        if self.step >= self.config.grpo.steps:
            self.save_final()
        return records


def run(config: TrainConfig, resume: str | None = None) -> None:
    trainer = GRPOTrainer(config)
    trainer.train(resume=resume)
    if not trainer.quiet:
        print(f"done: {trainer.output_dir}", file=sys.stderr)


__all__ = ["GRPOTrainer", "run", "step_seed"]
