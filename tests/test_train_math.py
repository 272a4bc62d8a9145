"""The training recipe's math on hand-made inputs: PCR rewards and schedules, the coarse-to-fine
batches, EGF gains and token weights on a hand-made trajectory, token masks, GRPO advantages
and loss, LoRA (init, merge, peft-format save/load, adapters off) and the config reader."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from assessor.schema import Diagnosis, TraceStep
from assessor.train import egf, pcr
from assessor.train.config import ConfigError, EGFConfig, LoRAConfig, PCRConfig, TrainConfig, load_config
from assessor.train.grpo import group_advantages, per_token_loss, token_logps, token_scales
from assessor.train.lora import (
    ADAPTER_WEIGHTS,
    LoRALinear,
    adapters_disabled,
    add_lora,
    load_adapter,
    merge_lora,
    merged_state_dict,
    save_adapter,
)
from assessor.vlm.loop import Generation, LoopConfig, TokenSpan, Trajectory

# --------------------------------------------------------------------------------------------
# PCR


def test_score_reward_and_tau_schedule():
    assert pcr.score_reward(3.0, 3.0, 0.5) == 1.0
    assert pcr.score_reward(3.25, 3.0, 0.5) == pytest.approx(0.5)
    assert pcr.score_reward(4.0, 3.0, 0.5) == 0.0  # clipped at 0
    assert pcr.score_reward(7.0, 5.0, 1.0) == 1.0  # the written score is clipped to 1..5 first
    assert pcr.score_reward(None, 3.0, 1.0) == 0.0 and pcr.score_reward(math.nan, 3.0, 1.0) == 0.0
    cfg = PCRConfig(tau_start=1.5, tau_end=0.35, tau_schedule="cosine", tau_until=0.8)
    taus = [pcr.tau_at(cfg, p) for p in np.linspace(0, 1, 11)]
    assert taus[0] == 1.5 and taus[8] == pytest.approx(0.35) and taus[-1] == pytest.approx(0.35)
    assert all(a >= b for a, b in zip(taus, taus[1:]))  # only tightens
    assert pcr.tau_at(cfg, 0.4) == pytest.approx((1.5 + 0.35) / 2)  # cosine midpoint
    lin = PCRConfig(tau_start=2.0, tau_end=1.0, tau_schedule="linear", tau_until=1.0)
    assert pcr.tau_at(lin, 0.25) == pytest.approx(1.75)
    # the same error earns less as tau tightens: coarse first, fine later
    early, late = (pcr.score_reward(3.5, 3.0, pcr.tau_at(cfg, p)) for p in (0.0, 1.0))
    assert early == pytest.approx(1 - 0.5 / 1.5) and late == 0.0


def test_format_tool_and_combined_reward():
    cfg = PCRConfig(w_score=1.0, w_format=0.2, w_tool=0.3, w_rank=0.5, tool_min_score=0.5)
    assert pcr.format_reward(True, True, 0.5) == 1.0
    assert pcr.format_reward(True, False, 0.5) == 0.5
    assert pcr.format_reward(False, True, 0.5) == 0.0
    # the tool reward needs a zoom, a good answer and a zoom whose evidence helped
    assert pcr.tool_reward(1, 0.8, 0.3, cfg, 0.05) == 1.0
    assert pcr.tool_reward(0, 0.8, None, cfg, 0.05) == 0.0  # no zoom
    assert pcr.tool_reward(2, 0.4, 0.3, cfg, 0.05) == 0.0  # wrong answer
    assert pcr.tool_reward(2, 0.9, 0.01, cfg, 0.05) == 0.0  # decorative zoom: no evidence gain
    parts = pcr.combine(cfg, 0.5, 1.0, 1.0, 0.8)
    assert parts.total == pytest.approx(0.5 + 0.2 + 0.3 + 0.4)


def test_thurstone_ranking_reward():
    # two images, true order a > b; every prediction of a above b's mean earns more
    preds = [[4.0, 3.0], [2.0, 2.0]]
    r = pcr.ranking_rewards(preds, [4.5, 1.5], eps=1e-6)
    mu_b, var_a, var_b = 2.0, 0.25, 0.0
    p = 0.5 * (1 + math.erf(((4.0 - mu_b) / math.sqrt(var_a + var_b + 1e-6)) / math.sqrt(2)))
    assert r[0][0] == pytest.approx(math.sqrt(p + 1e-6) + math.sqrt(1e-6))
    assert r[0][0] > r[0][1] > 0.9
    # image b is below a: a prediction far below a's mean (3.5) is right
    assert r[1][0] == pytest.approx(r[1][1]) and r[1][0] > 0.99
    # ties give g = 1/2: the reward peaks when p = 1/2
    tie = pcr.ranking_rewards([[3.0, 3.0], [3.0, 3.0]], [3.0, 3.0])
    assert tie[0][0] == pytest.approx(2 * math.sqrt(0.25 + 1e-6))
    # no answer, or nothing to compare with: 0
    assert pcr.ranking_rewards([[None, 3.0], [None, None]], [2.0, 4.0]) == [[0.0, 0.0], [0.0, 0.0]]


def test_curriculum_batches_go_from_coarse_to_fine():
    mos = np.random.default_rng(0).uniform(1, 5, 500)
    cfg = PCRConfig(window_start=1.0, window_end=0.2, window_until=0.5)
    assert pcr.window_at(cfg, 0.0) == 1.0 and pcr.window_at(cfg, 0.25) == pytest.approx(0.6)
    assert pcr.window_at(cfg, 0.9) == pytest.approx(0.2)

    def batches(window):
        return [pcr.curriculum_batch(mos, 8, window, np.random.default_rng(s)) for s in range(30)]

    early, late = batches(1.0), batches(0.2)
    assert all(len(set(b)) == 8 for b in early + late)
    # coarse: one image from each eighth of the quality range, neighbours ~0.5 apart
    spread_early = np.mean([pcr.batch_spread(mos[b]) for b in early])
    spread_late = np.mean([pcr.batch_spread(mos[b]) for b in late])
    assert 0.35 < spread_early < 0.6 and spread_late < 0.15
    bounds = np.cumsum([len(x) for x in np.array_split(np.arange(500), 8)])
    for b in early:
        ranks = np.argsort(np.argsort(mos))[b]
        assert sorted(np.searchsorted(bounds, ranks, side="right")) == list(range(8))  # one per stratum
    # the windows of late batches still move over the whole range
    assert min(mos[b].mean() for b in late) < 1.8 and max(mos[b].mean() for b in late) > 4.2
    # fewer samples than a batch: repeats, every sample used
    small = pcr.curriculum_batch(np.array([1.0, 3.0, 5.0]), 5, 1.0, np.random.default_rng(0))
    assert len(small) == 5 and set(small) == {0, 1, 2}
    # the same seed, the same batch (resume relies on it)
    assert pcr.curriculum_batch(mos, 8, 0.3, np.random.default_rng([4, 7])) == pcr.curriculum_batch(
        mos, 8, 0.3, np.random.default_rng([4, 7])
    )


# --------------------------------------------------------------------------------------------
# EGF and the token masks, on a hand-made trajectory


def hand_trajectory(answer_score=3.0, expected_at_score=3.4):
    """prompt (2 image tokens) | zoom turn | tool (2 image tokens) | answer turn."""
    img = 99
    traj = Trajectory(image=np.zeros((8, 8, 3), np.uint8), config=LoopConfig(), image_token_id=img)
    traj.token_ids = [1, img, img, 2, 3] + [10, 11, 12, 13, 14] + [4, img, img, 5] + [20, 21, 22, 23, 24, 25]
    traj.spans = [
        TokenSpan("prompt", 0, 5, 0),
        TokenSpan("model", 5, 10, 0),
        TokenSpan("tool", 10, 14, 1),
        TokenSpan("model", 14, 20, 1),
    ]
    zoom_text = "<think>hm</think><tool_call>{}</tool_call>"
    answer_text = "<think>ok</think><answer>3</answer>"
    traj.generations = [
        Generation(zoom_text, [10, 11, 12, 13, 14], token_offsets=[0, 9, 17, 28, 30]),
        Generation(answer_text, [20, 21, 22, 23, 24, 25], token_offsets=[0, 7, 17, 25, 26, 30]),
    ]
    traj.steps = [
        TraceStep(data={"zoom_box": [0, 0, 4, 4]}),
        TraceStep(data={"score_expected": expected_at_score}),
    ]
    traj.diagnosis = Diagnosis(score=answer_score)
    return traj


def test_token_masks_separate_policy_prompt_tool_and_image_tokens():
    traj = hand_trajectory()
    m = traj.token_masks()
    assert np.flatnonzero(m.policy).tolist() == [5, 6, 7, 8, 9, 14, 15, 16, 17, 18, 19]
    assert np.flatnonzero(m.image).tolist() == [1, 2, 11, 12]
    assert np.flatnonzero(m.tool).tolist() == [10, 11, 12, 13]
    assert np.flatnonzero(m.prompt).tolist() == [0, 1, 2, 3, 4]
    assert not (m.policy & (m.image | m.tool | m.prompt)).any()
    turns = egf.model_turns(traj)
    assert [(t.turn, t.start, t.end, t.zoomed) for t in turns] == [(0, 5, 10, True), (1, 14, 20, False)]
    assert egf.answer_token_start(traj, turns[1]) == 14 + 2  # "<answer>" starts in the third token
    assert egf.answer_token_start(traj, turns[0]) is None


def test_evidence_gains():
    traj = hand_trajectory(expected_at_score=3.4)
    # before the zoom the model would say 2.0, after it 2.9; it wrote its score believing 3.4; truth 3.2
    ev = egf.evidence(traj, [2.0, 2.9], mos=3.2)
    assert ev.gains[0] == pytest.approx(abs(2.0 - 3.2) - abs(2.9 - 3.2))  # the zoom helped: +0.9
    assert ev.gains[1] == pytest.approx(abs(2.9 - 3.2) - abs(3.4 - 3.2))  # final reasoning: +0.1
    assert ev.zoom_gains == [pytest.approx(0.9)] and ev.best_zoom_gain == pytest.approx(0.9)
    assert egf.expected_score([0, 0, 1, 0, 0]) == 3.0
    assert egf.expected_score([1, 0, 0, 0, 1]) == 3.0 and egf.expected_score([0, 2, 0, 0, 2]) == 3.5
    with pytest.raises(ValueError):
        egf.evidence(traj, [2.0], mos=3.0)
    traj.diagnosis = None  # no answer: nothing after the last turn to compare with
    assert egf.evidence(traj, [2.0, 2.9], mos=3.2).gains[1] is None


def test_egf_weights_keep_helpful_turns_and_always_the_answer():
    cfg = EGFConfig(min_gain=0.05, floor=0.0, mode="hard")
    traj = hand_trajectory()
    helped = egf.evidence(traj, [2.0, 2.9], mos=3.2)  # zoom gain +0.9
    decorative = egf.evidence(traj, [3.0, 3.0], mos=3.2)  # zoom gain 0: a decorative zoom
    answer = list(range(16, 20))
    reasoning_of_answer = [14, 15]
    # rewarded trajectory: a helpful zoom keeps its gradient; a decorative one is filtered
    w = egf.token_weights(traj, helped, +1.0, cfg)
    assert w[5:10].tolist() == [1.0] * 5 and w[answer].tolist() == [1.0] * 4
    assert w[reasoning_of_answer].tolist() == [1.0, 1.0]  # final reasoning moved 2.9 -> 3.4, truth 3.2: +0.1
    w = egf.token_weights(traj, decorative, +1.0, cfg)
    assert w[5:10].tolist() == [0.0] * 5 and w[answer].tolist() == [1.0] * 4  # a lucky guess: only the answer
    # penalised trajectory: the helpful zoom is not punished, the decorative one is
    assert egf.token_weights(traj, helped, -1.0, cfg)[5:10].tolist() == [0.0] * 5
    assert egf.token_weights(traj, decorative, -1.0, cfg)[5:10].tolist() == [1.0] * 5
    # never a weight outside the policy's tokens
    w = egf.token_weights(traj, helped, +1.0, cfg)
    assert w[~traj.token_masks().policy].sum() == 0
    # floor, soft mode, disabled
    assert egf.token_weights(traj, decorative, +1.0, EGFConfig(floor=0.25))[5] == 0.25
    soft = EGFConfig(mode="soft", min_gain=0.05, temperature=0.1, floor=0.0)
    assert egf.turn_weight(0.05, +1.0, soft) == pytest.approx(0.5)
    assert egf.turn_weight(0.9, +1.0, soft) > 0.99 and egf.turn_weight(0.9, -1.0, soft) < 0.01
    assert egf.token_weights(traj, decorative, +1.0, EGFConfig(enabled=False))[5:10].tolist() == [1.0] * 5
    assert egf.turn_weight(-3.0, 0.0, cfg) == 1.0  # zero advantage: no gradient anyway


# --------------------------------------------------------------------------------------------
# GRPO


def test_group_advantages():
    r = np.array([[1.0, 0.0, 0.5], [0.2, 0.2, 0.2]])
    a = group_advantages(r, scale=True)
    assert a[0] == pytest.approx((r[0] - 0.5) / (0.5 + 1e-4))
    assert a[1].tolist() == [0.0, 0.0, 0.0]  # equal rewards: no signal
    assert group_advantages(r, scale=False)[0] == pytest.approx([0.5, -0.5, 0.0])
    with pytest.raises(ValueError):
        group_advantages(np.array([1.0, 2.0]))


def test_clipped_loss_kl_and_scales():
    logp = torch.log(torch.tensor([0.5, 0.5, 0.5, 0.5], requires_grad=True))
    old = torch.log(torch.tensor([0.25, 0.25, 0.5, 0.5]))  # ratio 2, 2, 1, 1
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss, stats = per_token_loss(logp, adv, old_logp=old, clip_low=0.2, clip_high=0.28)
    # A > 0, ratio 2: clipped at 1.28; A < 0, ratio 2: the unclipped 2 (pessimistic)
    assert loss.detach().tolist() == pytest.approx([-1.28, 2.0, -1.0, 1.0])
    assert stats.clipped == pytest.approx(0.25) and stats.ratio == pytest.approx(1.5)
    # weights scale the policy-gradient term; the KL (k3) is added unweighted
    ref = torch.log(torch.tensor([0.25, 0.5, 0.5, 0.5]))
    w = torch.tensor([0.0, 1.0, 1.0, 1.0])
    loss, stats = per_token_loss(logp, adv, old_logp=old, ref_logp=ref, weights=w, beta=0.1)
    k3 = math.exp(math.log(0.5)) - math.log(0.5) - 1  # ref/p = 0.5 for the first token
    assert loss[0].item() == pytest.approx(0.1 * k3) and stats.kl == pytest.approx(k3 / 4)
    # ratio 1 (old = current): the gradient is -A * dlogp, the policy gradient
    p = torch.tensor([0.3], requires_grad=True)
    lp = torch.log(p)
    per_token_loss(lp, torch.tensor([2.0]))[0].sum().backward()
    assert p.grad.item() == pytest.approx(-2.0 / 0.3)
    with pytest.raises(ValueError):
        per_token_loss(logp, adv, beta=0.1)
    assert token_scales([3, 1], "token", 8, 4) == [1 / 8, 1 / 8]
    assert token_scales([3, 1], "sequence", 8, 4) == [1 / 12, 1 / 4]
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    assert token_logps(logits, torch.tensor([0]), 2.0).item() == pytest.approx(
        math.log(math.e / (math.e + 2))
    )


# --------------------------------------------------------------------------------------------
# LoRA


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.visual = nn.Module()
        self.visual.q_proj = nn.Linear(6, 6)
        self.layer = nn.Module()
        self.layer.q_proj = nn.Linear(6, 4)
        self.layer.other = nn.Linear(4, 4)

    def forward(self, x):
        return self.layer.other(self.layer.q_proj(self.visual.q_proj(x)))


def test_lora_starts_at_the_base_model_and_merges_exactly(tmp_path):
    model = Tiny()
    x = torch.randn(3, 6)
    base_out = model(x).detach()
    cfg = LoRAConfig(r=2, alpha=4.0, target_modules=["q_proj"], scope="language")
    names = add_lora(model, cfg, seed=1)
    assert names == ["layer.q_proj"]  # scope language: the vision tower's q_proj is left alone
    assert isinstance(model.layer.q_proj, LoRALinear) and model.layer.q_proj.scaling == 2.0
    assert torch.equal(model(x), base_out)  # lora_B starts at zero
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["layer.q_proj.lora_A.weight", "layer.q_proj.lora_B.weight"]
    with torch.no_grad():
        model.layer.q_proj.lora_B.weight.normal_()
    trained = model(x).detach()
    assert not torch.allclose(trained, base_out)
    with adapters_disabled(model):
        assert torch.equal(model(x), base_out)
    assert torch.equal(model(x), trained)
    # peft-format adapter: save, load into a fresh model, same outputs
    save_adapter(model, tmp_path / "adapter", cfg, "tiny")
    other = Tiny()
    add_lora(other, cfg, seed=5)
    assert load_adapter(other, tmp_path / "adapter") == 2
    assert torch.allclose(other(x), trained)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 2 and config["target_modules"] == ["q_proj"]
    assert (tmp_path / "adapter" / ADAPTER_WEIGHTS).is_file()
    # merging: from the state dict (what export uses) and in place, both equal the adapter's output
    merged_state = merged_state_dict(model.state_dict(), cfg)
    assert not any("lora_" in k or "base_layer" in k for k in merged_state)
    plain = Tiny()
    plain.load_state_dict(merged_state)
    assert torch.allclose(plain(x), trained, atol=1e-6)
    merge_lora(model)
    assert isinstance(model.layer.q_proj, nn.Linear) and torch.allclose(model(x), trained, atol=1e-6)


def test_lora_all_scope_and_bad_targets():
    model = Tiny()
    assert add_lora(model, LoRAConfig(r=1, target_modules=["q_proj"], scope="all")) == [
        "visual.q_proj",
        "layer.q_proj",
    ]
    with pytest.raises(ValueError, match="no linear layer matches"):
        add_lora(Tiny(), LoRAConfig(target_modules=["nothing"]))


# --------------------------------------------------------------------------------------------
# config


def test_config_reading_and_clear_errors(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(
        "output_dir: out\nmodel:\n  path: m\n  finetune: lora\ngrpo:\n  steps: 7\n  adam_betas: [0.9, 0.95]\n"
        "data:\n  train:\n    - {layout: kadid, root: /data/kadid}\n"
    )
    cfg = load_config(path, ["grpo.learning_rate=2e-6", "pcr.w_rank=0.5", "egf.mode=soft"])
    assert isinstance(cfg, TrainConfig) and cfg.grpo.steps == 7 and cfg.grpo.learning_rate == 2e-6
    assert cfg.grpo.adam_betas == [0.9, 0.95] and cfg.pcr.w_rank == 0.5 and cfg.egf.mode == "soft"
    assert cfg.data.train[0].layout == "kadid" and cfg.data.train[0].split == "all"
    json_path = tmp_path / "cfg.json"
    json_path.write_text(json.dumps(cfg.to_dict()))
    assert load_config(json_path) == cfg  # round trip
    cases = {
        "grpo.lr=1": "unknown config key 'grpo.lr'",
        "grpo.steps=ten": "grpo.steps must be an integer",
        "model.finetune=qlora": "model.finetune must be lora or full",
        "rollout.group_size=1": "rollout.group_size must be at least 2",
        "egf.floor=2": "egf.floor must be in [0, 1]",
        "pcr.tau_schedule=step": "pcr.tau_schedule must be constant, linear or cosine",
        "rollout.prompt_style=fancy": "unknown rollout.prompt_style 'fancy'",
        "grpo.scale_rewards=1": "grpo.scale_rewards must be true or false",
        "data.train=[{layout: imagenet, root: x}]": "unknown dataset layout 'imagenet'",
        "data.train=[{root: x}]": "missing required key(s) layout",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(path, [override])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_shipped_configs_load():
    import yaml

    from assessor.train import config as config_module

    folder = config_module.Path(config_module.__file__).parent / "configs"
    cfg = load_config(folder / "koniq_lora_7b.yaml")
    assert (
        cfg.model.finetune == "lora"
        and cfg.data.train[0].layout == "koniq"
        and cfg.data.train[0].split == "train"
    )
    assert cfg.grpo.learning_rate == 2e-5 and cfg.pcr.w_rank == 0.5 and cfg.egf.enabled
    kinds = {}
    for name in ("ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"):
        data = yaml.safe_load((folder / f"accelerate_{name}.yaml").read_text())
        kinds[name] = data["distributed_type"]
        assert data["num_processes"] == 8 and data["num_machines"] == 1
    assert kinds == {
        "ddp": "MULTI_GPU",
        "fsdp": "FSDP",
        "deepspeed_zero2": "DEEPSPEED",
        "deepspeed_zero3": "DEEPSPEED",
    }
