"""LoRA for the critic's linear layers, small enough to own (peft is not needed).

Why not peft: we need LoRA on nn.Linear only, an "adapters off" switch for the KL reference and
a merge for export; that is ~100 lines, while peft would be one more dependency to install in CI
and to keep in step with transformers' Qwen2.5-VL module layout. The adapter is saved in peft's
file format (``adapter_model.safetensors`` with keys ``base_model.model.<module>.lora_A.weight``
and an ``adapter_config.json``), so peft, vLLM's LoRA loader and our merge all read it.

Module names follow peft's too: a targeted ``q_proj`` becomes a :class:`LoRALinear` whose
``base_layer`` is the original layer, plus ``lora_A`` (r x in, Kaiming-uniform) and ``lora_B``
(out x r, zeros: training starts exactly at the base model) scaled by alpha / r.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import torch
from torch import nn

from .config import LoRAConfig

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."


class LoRALinear(nn.Module):
    """``base_layer(x) + lora_B(lora_A(dropout(x))) * alpha / r``; the adapter runs in float32."""

    def __init__(self, base_layer: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base_layer = base_layer
        self.r = r
        self.scaling = alpha / r
        device = base_layer.weight.device
        self.lora_A = nn.Linear(base_layer.in_features, r, bias=False, device=device, dtype=torch.float32)
        self.lora_B = nn.Linear(r, base_layer.out_features, bias=False, device=device, dtype=torch.float32)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.enabled = True

    @property
    def weight(self) -> torch.Tensor:  # code that reads layer.weight (dtype checks) still works
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if not self.enabled:
            return out
        delta = self.lora_B(self.lora_A(self.lora_dropout(x.to(self.lora_A.weight.dtype))))
        return out + (delta * self.scaling).to(out.dtype)

    def merged_weight(self) -> torch.Tensor:
        w = self.base_layer.weight
        delta = (self.lora_B.weight @ self.lora_A.weight) * self.scaling
        return (w.float() + delta.to(w.device)).to(w.dtype)


def _targets(model: nn.Module, config: LoRAConfig) -> list[str]:
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or isinstance(module, LoRALinear):
            continue
        if name.split(".")[-1] not in config.target_modules:
            continue
        if config.scope == "language" and ".visual." in f".{name}.":
            continue
        names.append(name)
    return names


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def add_lora(model: nn.Module, config: LoRAConfig, seed: int = 0) -> list[str]:
    """Freeze ``model`` and put LoRA adapters on the target layers; returns their names."""
    names = _targets(model, config)
    if not names:
        raise ValueError(
            f"no linear layer matches lora.target_modules {config.target_modules} (scope {config.scope})"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # the same adapters whatever ran before
    try:
        for name in names:
            base = model.get_submodule(name)
            _set_module(model, name, LoRALinear(base, config.r, config.alpha, config.dropout))
    finally:
        torch.random.set_rng_state(generator_state)
    return names


def lora_layers(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


@contextlib.contextmanager
def adapters_disabled(model: nn.Module):
    """The base model, for the KL reference: no second copy of the weights needed."""
    layers = [m for _, m in lora_layers(model)]
    for m in layers:
        m.enabled = False
    try:
        yield model
    finally:
        for m in layers:
            m.enabled = True


def _full_state(model_or_state) -> dict[str, torch.Tensor]:
    if isinstance(model_or_state, nn.Module):
        return {n: p for n, p in model_or_state.named_parameters()}
    return dict(model_or_state)


def adapter_state_dict(model_or_state) -> dict[str, torch.Tensor]:
    """The adapter weights in peft's key layout (float32, on the CPU), from a model or from a
    full state dict (what ``accelerator.get_state_dict`` gathers under FSDP or ZeRO-3)."""
    out = {}
    for name, value in _full_state(model_or_state).items():
        if ".lora_A." in name or ".lora_B." in name:
            out[PEFT_PREFIX + name] = value.detach().float().cpu().contiguous()
    return out


def merged_state_dict(state: dict[str, torch.Tensor], config: LoRAConfig) -> dict[str, torch.Tensor]:
    """A plain model state dict (no LoRA keys) with every adapter folded into its base weight."""
    scaling = config.alpha / config.r
    out = {}
    for name, value in state.items():
        if ".lora_A." in name or ".lora_B." in name:
            continue
        if ".base_layer." in name:
            layer, _, param = name.rpartition(".base_layer.")
            if param == "weight":
                a = state[f"{layer}.lora_A.weight"].float().to(value.device)
                b = state[f"{layer}.lora_B.weight"].float().to(value.device)
                value = (value.float() + (b @ a) * scaling).to(value.dtype)
            name = f"{layer}.{param}"
        out[name] = value
    return out


def save_adapter(model_or_state, folder: str | Path, config: LoRAConfig, base_model: str = "") -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = adapter_state_dict(model_or_state)
    save_file(tensors, str(folder / ADAPTER_WEIGHTS))
    modules = sorted({key.rsplit(".lora_", 1)[0].split(".")[-1] for key in tensors})
    peft_config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model,
        "r": config.r,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": modules,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "layers_to_transform": None,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
    }
    (folder / ADAPTER_CONFIG).write_text(json.dumps(peft_config, indent=2) + "\n")
    return folder


def load_adapter(model: nn.Module, folder: str | Path) -> int:
    """Load adapter weights (peft layout) into a model that already has LoRA layers."""
    from safetensors.torch import load_file

    path = Path(folder) / ADAPTER_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"no {ADAPTER_WEIGHTS} in {folder}")
    state = load_file(str(path))
    layers = dict(lora_layers(model))
    loaded = 0
    for key, value in state.items():
        name, _, part = key[len(PEFT_PREFIX) :].rpartition(".lora_")
        layer = layers.get(name)
        if layer is None:
            raise KeyError(f"{path}: the adapter has {name!r}, which this model has no LoRA layer for")
        target = layer.lora_A if part.startswith("A") else layer.lora_B
        with torch.no_grad():
            target.weight.copy_(value.to(target.weight.device, target.weight.dtype))
        loaded += 1
    if loaded != 2 * len(layers):
        raise KeyError(f"{path}: {loaded} adapter tensors for {len(layers)} LoRA layers")
    return loaded


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base layer and put the plain layers back (in place)."""
    for name, layer in lora_layers(model):
        base = layer.base_layer
        with torch.no_grad():
            base.weight.copy_(layer.merged_weight())
        _set_module(model, name, base)
    return model
