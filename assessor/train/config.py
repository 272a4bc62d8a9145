"""The training configuration: nested dataclasses read from YAML or JSON, unknown keys rejected.

Every weight and schedule of the recipe (GRPO, the Perceptual Curriculum Reward, Evidence
Gradient Filtering) is a field here, so a run is fully described by its config file, which the
trainer copies next to its checkpoints.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from ..vlm.prompts import PROMPT_STYLES

LAYOUTS = ("koniq", "spaq", "kadid", "livec", "pipal", "agiqa3k", "csiq", "folder")
SPLITS = ("all", "train", "test")


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and the fix."""


@dataclass
class DatasetSpec:
    """One IQA dataset on disk (see :mod:`assessor.train.data` for the layouts)."""

    layout: str  # koniq, spaq, kadid, livec, pipal, agiqa3k, csiq, or folder (image folder + CSV/JSON)
    root: str
    labels: str | None = None  # the label file (CSV/JSON for folder; overrides a layout's default)
    images: str | None = None  # the image folder, relative to root (overrides a layout's default)
    split: str = "all"  # all, train or test: the official split where there is one, else by content
    test_fraction: float = 0.2
    mos_range: list[float] | None = None  # folder layout: [worst, best] of its MOS column
    limit: int | None = None  # keep the first N samples (quick runs)
    name: str | None = None  # shown in logs and tables (default: the layout)

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ConfigError(f"unknown dataset layout {self.layout!r}; choose one of {', '.join(LAYOUTS)}")
        if self.split not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.mos_range is not None and (
            len(self.mos_range) != 2 or self.mos_range[0] == self.mos_range[1]
        ):
            raise ConfigError(
                f"mos_range must be [worst, best] with two different values, got {self.mos_range}"
            )

    @property
    def label(self) -> str:
        return self.name or self.layout


@dataclass
class DataConfig:
    train: list[DatasetSpec] = field(default_factory=list)
    max_side: int | None = None  # downscale images whose longer side exceeds this (None: keep)
    check_images: bool = False  # decode every image at start-up (slow), instead of skipping bad ones later


@dataclass
class ModelConfig:
    path: str = ""  # local folder or hub id (safetensors); the processor is read from the same place
    dtype: str = "auto"  # auto: bfloat16 on GPU, float32 on CPU
    attn_implementation: str | None = None  # e.g. sdpa, flash_attention_2
    min_pixels: int | None = None
    max_pixels: int | None = None  # the resolution the model sees (default: ~1 MP, as at inference)
    trust_remote_code: bool = False
    finetune: str = "lora"  # lora or full
    freeze_vision: bool = True  # full fine-tuning: keep the vision tower frozen
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.finetune not in ("lora", "full"):
            raise ConfigError(f"model.finetune must be lora or full, got {self.finetune!r}")


@dataclass
class LoRAConfig:
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    scope: str = "language"  # language: only the language model's layers; all: the vision tower too

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ConfigError(f"lora.r must be at least 1, got {self.r}")
        if self.scope not in ("language", "all"):
            raise ConfigError(f"lora.scope must be language or all, got {self.scope!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class RolloutConfig:
    """How trajectories are sampled: the inference loop's settings plus the group size."""

    group_size: int = 8  # G: trajectories per image
    images_per_device: int = 4  # images per step on each process
    generation_batch: int = 64  # trajectories decoded together
    prompt_style: str = "qdeepsight"
    max_turns: int = 4
    max_crops: int = 3
    max_new_tokens: int = 512
    crop_size: int = 448
    coordinates: str = "auto"
    temperature: float = 1.0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise ConfigError(
                f"rollout.group_size must be at least 2 (GRPO compares a group), got {self.group_size}"
            )
        if self.images_per_device < 1:
            raise ConfigError(f"rollout.images_per_device must be at least 1, got {self.images_per_device}")
        if self.prompt_style not in PROMPT_STYLES:
            raise ConfigError(
                f"unknown rollout.prompt_style {self.prompt_style!r}; choose one of {', '.join(PROMPT_STYLES)}"
            )


@dataclass
class GRPOConfig:
    steps: int = 1000  # optimizer steps (each one: a fresh batch of rollouts)
    learning_rate: float = 1e-5
    lr_schedule: str = "constant"  # constant, linear or cosine (after warm-up)
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    max_grad_norm: float = 1.0
    clip_low: float = 0.2  # ratio clipped to [1 - clip_low, 1 + clip_high]
    clip_high: float = 0.28
    kl_beta: float = 0.0  # > 0: k3 KL to the frozen reference (LoRA: the base model, adapters off)
    loss_type: str = "token"  # token: every policy token counts once (DAPO); sequence: mean per trajectory
    scale_rewards: bool = True  # divide advantages by the group's reward std (False: Dr. GRPO)
    iterations: int = 1  # updates per batch of rollouts (mu); > 1 recomputes old log-probs
    micro_batch: int = 4  # trajectories per forward/backward

    def __post_init__(self) -> None:
        if self.lr_schedule not in ("constant", "linear", "cosine"):
            raise ConfigError(
                f"grpo.lr_schedule must be constant, linear or cosine, got {self.lr_schedule!r}"
            )
        if self.loss_type not in ("token", "sequence"):
            raise ConfigError(f"grpo.loss_type must be token or sequence, got {self.loss_type!r}")
        if self.iterations < 1 or self.micro_batch < 1 or self.steps < 1:
            raise ConfigError("grpo.steps, grpo.iterations and grpo.micro_batch must be at least 1")
        if len(self.adam_betas) != 2:
            raise ConfigError(f"grpo.adam_betas must be two numbers, got {self.adam_betas}")


@dataclass
class PCRConfig:
    """Perceptual Curriculum Reward: weights, the tolerance schedule and the coarse-to-fine batches."""

    w_score: float = 1.0
    w_format: float = 0.2
    w_tool: float = 0.3
    w_rank: float = 0.0  # > 0 adds the in-batch Thurstone ranking term (VisualQuality-R1)
    tau_start: float = 1.5  # score tolerance at the start: 1 - |s_hat - s| / tau, clipped to [0, 1]
    tau_end: float = 0.35  # ... and at the end of the schedule (Q-Insight's hard threshold)
    tau_schedule: str = "cosine"  # constant, linear, cosine
    tau_until: float = 0.8  # fraction of training at which tau reaches tau_end
    window_start: float = 1.0  # a step draws its images across this fraction of the MOS-sorted data ...
    window_end: float = 0.25  # ... shrinking to this (close qualities: fine differences)
    window_until: float = 0.5  # fraction of training at which the window reaches window_end
    format_partial: float = 0.5  # format reward of an answer that needed repairs or corrections
    tool_min_score: float = 0.5  # the tool reward needs a score reward at least this high ...
    rank_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.tau_schedule not in ("constant", "linear", "cosine"):
            raise ConfigError(
                f"pcr.tau_schedule must be constant, linear or cosine, got {self.tau_schedule!r}"
            )
        if not (self.tau_start > 0 and self.tau_end > 0):
            raise ConfigError("pcr.tau_start and pcr.tau_end must be positive")
        for key in ("window_start", "window_end", "tau_until", "window_until"):
            if not 0.0 < getattr(self, key) <= 1.0:
                raise ConfigError(f"pcr.{key} must be in (0, 1], got {getattr(self, key)}")


@dataclass
class EGFConfig:
    """Evidence Gradient Filtering: which reasoning turns keep their gradient."""

    enabled: bool = True
    min_gain: float = 0.05  # a turn helped if it moved the expected score this much closer to the truth
    floor: float = 0.0  # weight of the tokens of filtered turns (0: no gradient)
    mode: str = "hard"  # hard: 1 or floor; soft: floor + (1 - floor) * sigmoid(sign(A) (gain - min_gain) / temperature)
    temperature: float = 0.1
    probe_batch: int = 8  # probe sequences per forward pass

    def __post_init__(self) -> None:
        if self.mode not in ("hard", "soft"):
            raise ConfigError(f"egf.mode must be hard or soft, got {self.mode!r}")
        if not 0.0 <= self.floor <= 1.0:
            raise ConfigError(f"egf.floor must be in [0, 1], got {self.floor}")


@dataclass
class TrainConfig:
    output_dir: str = "runs/grpo"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    pcr: PCRConfig = field(default_factory=PCRConfig)
    egf: EGFConfig = field(default_factory=EGFConfig)
    log_every: int = 1  # console line every N steps (the JSONL log gets every step)
    save_every: int = 100  # checkpoint every N steps (and at the end)
    keep_checkpoints: int = 2
    export_merged: bool = False  # LoRA: also write a merged model folder usable as --model

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------
# reading


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{where} must not be empty")
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], where)
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping of keys, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads 1e-5 (no dot) as text
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    return value


def from_dict(cls, data: dict[str, Any], where: str = ""):
    """Build dataclass ``cls`` from a mapping; unknown keys are errors that suggest the right one."""
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in hints:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {(where + '.' if where else '') + close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {path!r}{hint} (known here: {', '.join(names)})")
        kwargs[key] = _convert(value, hints[key], path)
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [k for k in required if k not in kwargs]
    if missing:
        raise ConfigError(f"{where or 'config'}: missing required key(s) {', '.join(missing)}")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where + ': ' if where else ''}{exc}") from None


def _read_mapping(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        data = json.loads(text)
    else:
        try:
            import yaml
        except ImportError:
            raise ConfigError(
                "reading a YAML config needs pyyaml: pip install 'q-deepsight-pig[train]' (or use a .json config)"
            ) from None
        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys")
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """``grpo.steps=10`` -> (["grpo", "steps"], 10); the value is read as YAML/JSON when it can be."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    try:
        import yaml

        value = yaml.safe_load(raw)
    except ImportError:
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
    return key.strip().split("."), value


def load_config(
    path: str | Path | None = None, overrides: list[str] = (), base: dict | None = None
) -> TrainConfig:
    """Read a config file (YAML or JSON), apply ``key.sub=value`` overrides, validate."""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        data = _read_mapping(path)
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item}: {k} is not a section")
        node[keys[-1]] = value
    return from_dict(TrainConfig, data)


def config_to_yaml(config: TrainConfig) -> str:
    try:
        import yaml

        return yaml.safe_dump(config.to_dict(), sort_keys=False)
    except ImportError:
        return json.dumps(config.to_dict(), indent=2)
