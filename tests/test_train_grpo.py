"""GRPO end to end on the CPU with the tiny random Qwen2.5-VL: rollouts through the real loop
with real crop_zoom calls (a scripted logits processor decides what the model writes, so the
trajectories are known), EGF probes, PCR rewards, LoRA updates with a KL reference and two
iterations per batch, checkpoints, and a resume that equals the uninterrupted run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from tiny_qwen import save_tiny_qwen

from assessor.train.config import load_config
from assessor.train.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, PEFT_PREFIX
from assessor.train.trainer import GRPOTrainer
from assessor.vlm.scripted import ScriptedLogitsProcessor
from assessor.vlm.tiny import build_tokenizer

REPO = Path(__file__).resolve().parents[1]
ZOOM = '<think>check the {what}</think>\n<tool_call>{{"name": "crop_zoom", "arguments": {{"bbox_2d": [{x0}, 8, {x1}, 60]}}}}</tool_call>'
ANSWER = "<think>decided</think>\n<answer>{score}</answer>"
# rows = image k * G + sample s (2 images x 3 samples): answers and zoom counts differ per row
SCRIPTS = [
    [ZOOM.format(what="sky", x0=0, x1=50), ANSWER.format(score=4)],
    [ANSWER.format(score=2)],
    [ZOOM.format(what="edge", x0=10, x1=70), ZOOM.format(what="face", x0=40, x1=100), ANSWER.format(score=3)],
    [ANSWER.format(score=5)],
    [ZOOM.format(what="tree", x0=20, x1=60), ANSWER.format(score=1)],
    [ZOOM.format(what="roof", x0=0, x1=40), ANSWER.format(score=3.5)],
]


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a CPU shared with other jobs, more threads can be many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo")
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    lines = ["image,mos"]
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (84, 112, 3), dtype=np.uint8)).save(data / f"im{i}.png")
        lines.append(f"im{i}.png,{1 + 0.7 * i:.2f}")
    (data / "labels.csv").write_text("\n".join(lines) + "\n")
    model = save_tiny_qwen(root / "model", seed=0)
    return root, data, model


def make_config(root: Path, data: Path, model: Path, out: str, steps: int = 4):
    return load_config(
        base={
            "output_dir": str(root / out),
            "seed": 3,
            "model": {"path": str(model)},
            "data": {"train": [{"layout": "folder", "root": str(data)}]},
            "lora": {"r": 4, "alpha": 8},
            "rollout": {
                "group_size": 3,
                "images_per_device": 2,
                "prompt_style": "plain",
                "max_turns": 4,
                "max_crops": 2,
                "max_new_tokens": 120,
                "crop_size": 56,
            },
            "grpo": {
                "steps": steps,
                "learning_rate": 1e-2,
                "kl_beta": 0.05,
                "micro_batch": 2,
                "iterations": 2,
            },
            "pcr": {"w_rank": 0.5},
            "save_every": 2,
        }
    )


def trainer_for(config):
    return GRPOTrainer(
        config, logits_processors=[ScriptedLogitsProcessor(build_tokenizer(), SCRIPTS)], quiet=True
    )


def lora_tensors(trainer):
    return {n: p.detach().clone() for n, p in trainer.unwrapped.named_parameters() if p.requires_grad}


STABLE = (
    "step",
    "reward",
    "r_score",
    "r_format",
    "r_tool",
    "r_rank",
    "mae",
    "loss",
    "kl",
    "clip_frac",
    "lr",
    "tau",
)


@pytest.fixture(scope="module")
def full_run(setup):
    root, data, model = setup
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module-scoped: the autouse fixture is not active yet
    try:
        trainer = trainer_for(make_config(root, data, model, "full"))
        before = lora_tensors(trainer)
        records = trainer.train()
    finally:
        torch.set_num_threads(threads)
    return trainer, before, records


def test_rollouts_have_real_tool_calls_and_only_policy_tokens_train(setup):
    root, data, model = setup
    trainer = trainer_for(make_config(root, data, model, "inspect"))
    images, mos, index = trainer.step_images(0)
    assert len(images) == 2 and all(1.0 <= m <= 5.0 for m in mos)
    groups = trainer.rollout(images, mos, seed=1)
    assert [len(g) for g in groups] == [3, 3]
    trajs = [s.traj for g in groups for s in g]
    # the scripted trajectories ran through the loop: zooms executed, crops inserted as tool turns
    assert [len(t.zooms) for t in trajs] == [1, 0, 2, 0, 1, 1]
    assert [s.pred for g in groups for s in g] == [4.0, 2.0, 3.0, 5.0, 1.0, 3.5]
    for t, script in zip(trajs, SCRIPTS):
        assert [g.text for g in t.generations] == script
        kinds = [s.kind for s in t.spans]
        assert kinds == ["prompt"] + ["model", "tool"] * len(t.zooms) + ["model"]
        masks = t.token_masks()
        # the crop's image tokens are in the tool turn, never in the policy's tokens
        assert not (masks.policy & masks.image).any()
        assert not (masks.policy & masks.tool).any()
        assert masks.image[masks.prompt].sum() > 0
        assert (masks.image[masks.tool].sum() > 0) == bool(t.zooms)
        text = trainer.tokenizer.decode(np.asarray(t.token_ids)[masks.policy].tolist())
        assert text.replace("<|im_end|>", "") == "".join(script)
    trainer.probe(groups)
    trainer.score(groups, progress=0.0)
    trainer.prepare_targets(groups)
    for g in groups:
        adv = np.array([s.advantage for s in g])
        assert abs(adv.sum()) < 1e-9 and adv.std() > 0  # group-normalised, not all equal
        for s in g:
            masks = s.traj.token_masks()
            assert masks.policy[s.targets].all()  # gradient only on the policy's own tokens
            assert len(s.targets) == masks.policy.sum()
            assert len(s.evidence.beliefs) == s.traj.turns
            assert s.weights.min() >= 0.0 and s.weights.max() <= 1.0
            # the answer's tokens always keep their gradient
            answer_at = s.traj.spans[-1].start + s.traj.generations[-1].text.index("<answer>")
            assert (s.weights[s.targets >= answer_at] == 1.0).all()


def test_grpo_steps_train_lora_and_log(full_run):
    trainer, before, records = full_run
    out = trainer.output_dir
    after = lora_tensors(trainer)
    assert set(before) == set(after) and all(".lora_" in n for n in after)
    changed = [n for n in after if not torch.equal(before[n], after[n])]
    assert len(changed) == len(after)  # every adapter moved (lora_B starts at 0)
    base = dict(trainer.unwrapped.named_parameters())
    assert not any(p.requires_grad for n, p in base.items() if ".lora_" not in n)
    lines = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4]
    for r in lines:
        assert r["trajectories"] == 6 and r["answered"] == 1.0
        assert r["tool_call_rate"] == pytest.approx(4 / 6) and r["zooms_per_traj"] == pytest.approx(5 / 6)
        assert r["probes"] == 7  # unique turn starts: 1 + 3 zoom turns for image 0, 1 + 2 for image 1
        assert 0.0 <= r["r_rank"] <= 1.01 and r["r_format"] == 1.0
        assert r["kl"] >= 0.0 and np.isfinite(r["loss"])
    assert lines[0]["kl"] < lines[-1]["kl"]  # the policy moves away from the reference
    taus = [r["tau"] for r in lines]
    assert taus == sorted(taus, reverse=True) and taus[0] > taus[-1]  # the tolerance tightens
    # checkpoints every 2 steps, the final adapter in peft's layout
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    adapter = out / "final" / "adapter"
    tensors = load_file(str(adapter / ADAPTER_WEIGHTS))
    assert len(tensors) == 2 * 14 and all(k.startswith(PEFT_PREFIX) for k in tensors)
    assert json.loads((adapter / ADAPTER_CONFIG).read_text())["r"] == 4
    key = next(k for k in tensors if k.endswith("q_proj.lora_B.weight"))
    assert torch.equal(tensors[key], after[key[len(PEFT_PREFIX) :]])


def test_resume_equals_the_uninterrupted_run(setup, full_run):
    trainer, _, records = full_run
    root, data, model = setup
    resumed = trainer_for(make_config(root, data, model, "resumed"))
    later = resumed.train(resume=trainer.output_dir / "checkpoints" / "step-0000002")
    assert [r["step"] for r in later] == [3, 4]
    for a, b in zip(records[2:], later):
        assert {k: a[k] for k in STABLE} == {k: b[k] for k in STABLE}
    final, again = lora_tensors(trainer), lora_tensors(resumed)
    assert all(torch.equal(final[n], again[n]) for n in final)
    state_a = trainer.optimizer.state_dict()["state"]
    state_b = resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(state_a[k]["exp_avg"], state_b[k]["exp_avg"]) for k in state_a)


WORKER = """
import sys
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
from pathlib import Path
from safetensors.torch import save_file
import test_train_grpo as t
root, data, model = Path({root!r}), Path({data!r}), Path({model!r})
trainer = t.ddp_trainer(t.make_config(root, data, model, "ddp", steps=2), images=1)
records = trainer.train()
acc = trainer.accelerator
assert acc.num_processes == 2, acc.num_processes
save_file(t.lora_tensors(trainer), str(root / f"ddp_rank{{acc.process_index}}.safetensors"))
(root / f"ddp_rank{{acc.process_index}}.txt").write_text(repr(trainer.step_images(0)[2]) + " " + repr(records[-1]["trajectories"]))
"""


def ddp_trainer(config, images: int):
    """Every sample s of every image writes SAMPLE_SCRIPTS[s]: the rollouts do not depend on how
    the images are spread over processes."""
    config.rollout.images_per_device = images
    config.pcr.w_rank = 0.0  # the ranking term compares the images of one process only
    scripts = [SCRIPTS[s] for _ in range(images) for s in range(3)]
    return GRPOTrainer(
        config, logits_processors=[ScriptedLogitsProcessor(build_tokenizer(), scripts)], quiet=True
    )


@pytest.mark.slow
def test_ddp_on_two_processes_equals_one_process(setup):
    """torchrun with 2 CPU processes (gloo), one image each, against one process with both images:
    each process draws its own slice of the step's images, the loss is normalised over the tokens
    of all processes and the gradients are averaged, so the trained adapters agree."""
    root, data, model = setup
    single = ddp_trainer(make_config(root, data, model, "single", steps=2), images=2)
    single.train()
    script = root / "worker.py"
    tests = str(Path(__file__).resolve().parent)
    script.write_text(WORKER.format(tests=tests, root=str(root), data=str(data), model=str(model)))
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
        str(script),
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    ranks = [load_file(str(root / f"ddp_rank{r}.safetensors")) for r in (0, 1)]
    reference = lora_tensors(single)
    for name, value in reference.items():
        assert torch.equal(ranks[0][name], ranks[1][name])  # the processes stay in sync
        assert torch.allclose(ranks[0][name], value, rtol=1e-4, atol=1e-6), name
    slices = [(root / f"ddp_rank{r}.txt").read_text().split(" ") for r in (0, 1)]
    assert slices[0][0] != slices[1][0] and slices[0][1] == slices[1][1] == "6"  # own images, global metrics
    assert sorted(eval(slices[0][0]) + eval(slices[1][0])) == sorted(single.step_images(0)[2])


def test_cli_check_and_errors(setup, tmp_path):
    root, data, model = setup
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"output_dir: {tmp_path / 'o'}\nmodel:\n  path: {model}\ndata:\n  train:\n    - layout: folder\n      root: {data}\n"
    )
    run = [sys.executable, "-m", "assessor.train", "--config", str(cfg)]
    ok = subprocess.run([*run, "--check"], capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    assert "folder: 6 images" in ok.stdout and "6 training images" in ok.stdout
    bad = subprocess.run([*run, "--set", "grpo.learning_rat=1e-5"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        "error: unknown config key 'grpo.learning_rat'; did you mean 'grpo.learning_rate'? (known here: "
        "steps, learning_rate, lr_schedule, warmup_steps, weight_decay, adam_betas, max_grad_norm, clip_low, "
        "clip_high, kl_beta, loss_type, scale_rewards, iterations, micro_batch)"
    )
    missing = subprocess.run(
        [*run, "--set", f"data.train=[{{layout: koniq, root: {tmp_path}}}]", "--check"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert missing.returncode == 2 and "koniq10k_scores_and_distributions.csv" in missing.stderr
    helped = subprocess.run([*run[:3], "--help"], capture_output=True, text=True, cwd=REPO)
    assert "accelerate launch" in helped.stdout and "--resume" in helped.stdout


def test_exports_merged_lora_and_full_fine_tuning(setup):
    """final/merged (LoRA folded in) loads as a plain checkpoint and computes what the trained
    adapters computed; full fine-tuning keeps the vision tower frozen and saves final/model."""
    from transformers import AutoModelForImageTextToText

    from assessor.train.rollout import encode

    root, data, model = setup
    cfg = make_config(root, data, model, "merged", steps=1)
    cfg.export_merged = True
    lora = trainer_for(cfg)
    lora.train()
    full_cfg = make_config(root, data, model, "full_ft", steps=1)
    full_cfg.model.finetune = "full"
    full = trainer_for(full_cfg)
    vision_before = {n: p.detach().clone() for n, p in full.unwrapped.named_parameters() if ".visual." in n}
    lm_before = full.unwrapped.model.language_model.layers[0].mlp.up_proj.weight.detach().clone()
    full.train()
    merged = AutoModelForImageTextToText.from_pretrained(root / "merged" / "final" / "merged").eval()
    images, mos, _ = lora.step_images(0)
    traj = lora.rollout(images[:1], mos[:1], seed=0)[0][0].traj
    inputs = encode(lora.transport, traj)
    with torch.no_grad():
        want = lora.unwrapped.eval()(**inputs, use_cache=False).logits
        got = merged(**inputs, use_cache=False).logits
    assert torch.allclose(got, want, atol=1e-4)
    assert (root / "merged" / "final" / "adapter" / "adapter_model.safetensors").is_file()
    # full fine-tuning: a KL reference copy, the vision tower untouched, the language model trained
    assert full.ref_model is not None and full.lora_names == []
    after = dict(full.unwrapped.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in vision_before.items())
    assert not torch.equal(full.unwrapped.model.language_model.layers[0].mlp.up_proj.weight, lm_before)
    saved = AutoModelForImageTextToText.from_pretrained(root / "full_ft" / "final" / "model")
    assert torch.equal(
        saved.model.language_model.layers[0].mlp.up_proj.weight,
        after["model.language_model.layers.0.mlp.up_proj.weight"],
    )
