"""The ComfyUI node pack without ComfyUI: tensor layouts, batches, masks, node definitions, and the
nodes' own logic called directly (the real executor is in test_comfy_executor.py)."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import comfy_nodes
from assessor.imageio import load_image
from assessor.schema import Diagnosis, Region
from comfy_nodes import model_paths
from comfy_nodes.comfy_refiner import ComfySamplerRefiner, SamplerSettings, is_inpaint_model, region_denoise
from comfy_nodes.hooks import RoundProgress, interrupt_check
from comfy_nodes.nodes_assess import (
    BACKEND_NAMES,
    AssessImageQuality,
    LoadQDeepSightAssessor,
    assessor_options,
)
from comfy_nodes.nodes_pig import (
    PiGPlan,
    PiGRefineClassical,
    configure_sdxl,
    format_history,
    parse_region_prompts,
)
from comfy_nodes.nodes_report import save_text
from comfy_nodes.tensors import (
    TensorLayoutError,
    dump_diagnoses,
    image_batch_to_rgb8,
    keep_untouched,
    masks_for_batch,
    masks_to_tensor,
    parse_diagnoses,
    regions_mask,
    rgb8_to_image_batch,
)
from pig.plan import make_plan

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "assessor" / "samples" / "sample.png"


@pytest.fixture(scope="module")
def sample_rgb() -> np.ndarray:
    return load_image(SAMPLE).rgb


@pytest.fixture(scope="module")
def classical():
    return LoadQDeepSightAssessor().load("classical", model_paths.NO_MODEL, "", "auto", "auto", "")[0]


@pytest.fixture(scope="module")
def learned():
    critic = LoadQDeepSightAssessor().load("learned", model_paths.NO_MODEL, "", "cpu", "auto", "")[0]
    yield critic
    critic.close()


def as_image(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb.astype(np.float32) / 255.0).unsqueeze(0)


# --- tensor layouts ---------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 3),
    height=st.integers(1, 12),
    width=st.integers(1, 12),
    seed=st.integers(0, 2**31 - 1),
)
def test_rgb8_round_trip_is_exact(batch, height, width, seed):
    rgbs = [
        np.random.default_rng(seed + i).integers(0, 256, (height, width, 3), dtype=np.uint8)
        for i in range(batch)
    ]
    images = rgb8_to_image_batch(rgbs)
    assert images.shape == (batch, height, width, 3) and images.dtype == torch.float32
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    for a, b in zip(image_batch_to_rgb8(images), rgbs):
        np.testing.assert_array_equal(a, b)


def test_image_layouts_single_grey_alpha_and_out_of_range():
    single = torch.full((5, 7, 3), 0.5)
    (rgb,) = image_batch_to_rgb8(single)
    assert rgb.shape == (5, 7, 3) and rgb.dtype == np.uint8 and int(rgb[0, 0, 0]) == 128
    grey = torch.linspace(0, 1, 6).reshape(1, 2, 3, 1)
    (g,) = image_batch_to_rgb8(grey)
    assert g.shape == (2, 3, 3) and (g[..., 0] == g[..., 2]).all() and int(g[1, 2, 0]) == 255
    rgba = torch.zeros(2, 4, 4, 4)
    rgba[..., 3] = 1.0
    assert [x.shape for x in image_batch_to_rgb8(rgba)] == [(4, 4, 3), (4, 4, 3)]
    wild = torch.tensor([[[[-1.0, 2.0, float("nan")]]]])
    np.testing.assert_array_equal(image_batch_to_rgb8(wild)[0][0, 0], [0, 255, 0])


@pytest.mark.parametrize("shape", [(4, 4), (1, 4, 4, 2), (4, 4, 4, 4, 3), (0, 4, 4, 3)])
def test_bad_image_layouts_say_what_they_saw(shape):
    with pytest.raises(TensorLayoutError, match="IMAGE|empty"):
        image_batch_to_rgb8(torch.zeros(shape))


def test_masks_2d_3d_4d_broadcast_and_resize():
    assert masks_for_batch(None, 3, 4, 5) == [None, None, None]
    flat = torch.zeros(4, 5)
    flat[1, 2] = 1.0
    for mask in (flat, flat[None], flat[None, None]):
        out = masks_for_batch(mask, 2, 4, 5)
        assert len(out) == 2 and all(m.shape == (4, 5) and m.dtype == np.float32 for m in out)
        assert out[0][1, 2] == 1.0 and out[1][1, 2] == 1.0 and out[0].sum() == 1.0
    per_image = torch.stack([torch.zeros(4, 5), torch.ones(4, 5)])
    zero, one = masks_for_batch(per_image, 2, 4, 5)
    assert zero.max() == 0.0 and one.min() == 1.0
    small = torch.ones(1, 2, 2)
    (resized,) = masks_for_batch(small, 1, 8, 6)
    assert resized.shape == (8, 6) and resized.min() == 1.0
    (clamped,) = masks_for_batch(torch.full((2, 2), 3.0), 1, 2, 2)
    assert clamped.max() == 1.0


def test_mask_batch_mismatch_is_an_error():
    with pytest.raises(TensorLayoutError, match="2 masks for 3 images"):
        masks_for_batch(torch.zeros(2, 4, 4), 3, 4, 4)
    with pytest.raises(TensorLayoutError, match="MASK"):
        masks_for_batch(torch.zeros(4), 1, 4, 4)


def test_masks_to_tensor_layout():
    t = masks_to_tensor([np.zeros((3, 4)), np.full((3, 4), 2.0)])
    assert t.shape == (2, 3, 4) and t.dtype == torch.float32 and float(t.max()) == 1.0


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_keep_untouched_is_float_exact_where_nothing_changed(seed):
    rng = np.random.default_rng(seed)
    original = torch.from_numpy(rng.random((6, 7, 3), dtype=np.float32))
    (orig8,) = image_batch_to_rgb8(original)
    refined = orig8.copy()
    refined[2:4, 3:5] = 255 - refined[2:4, 3:5]
    out = keep_untouched(original, orig8, refined)
    changed = np.any(refined != orig8, axis=-1)
    assert torch.equal(out[~torch.from_numpy(changed)], original[~torch.from_numpy(changed)])
    np.testing.assert_allclose(out.numpy()[changed], refined[changed] / 255.0, atol=1e-7)


def test_regions_mask_boxes_severity_and_scaling():
    d = Diagnosis(
        score=3.0,
        regions=[Region([2, 1, 6, 3], "blur", 0.9), Region([0, 0, 2, 2], "noise", 0.05)],
        image_size=(8, 4),
    )
    m = regions_mask(d, 4, 8, min_severity=0.1)
    assert m.shape == (4, 8) and m.sum() == 8 and m[1:3, 2:6].min() == 1.0
    assert regions_mask(d, 4, 8).sum() == 12
    doubled = regions_mask(d, 8, 16, min_severity=0.1)
    assert doubled.sum() == 32 and doubled[2:6, 4:12].min() == 1.0


def test_diagnoses_json_single_object_and_batch_list():
    a = Diagnosis(score=2.5, regions=[Region([0, 0, 4, 4], "jpeg", 0.5, "blocks")], image_size=(8, 8))
    b = Diagnosis(score=4.0, image_size=(8, 8))
    assert isinstance(json.loads(dump_diagnoses([a])), dict)
    assert [d.score for d in parse_diagnoses(dump_diagnoses([a, b]))] == [2.5, 4.0]
    assert parse_diagnoses(dump_diagnoses([a]))[0].regions[0].reason == "blocks"
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_diagnoses("not json")


def test_region_prompts_by_index_and_distortion():
    d = Diagnosis(
        score=3,
        regions=[Region([0, 0, 4, 4], "blur", 0.5), Region([4, 4, 8, 8], "noise", 0.5)],
        image_size=(8, 8),
    )
    assert parse_region_prompts("# c\n1: a cat\n\nblur: sharp fur", d) == {1: "a cat", 0: "sharp fur"}
    with pytest.raises(ValueError, match="no region 5"):
        parse_region_prompts("5: x", d)
    with pytest.raises(ValueError, match="neither a region index"):
        parse_region_prompts("fur: x", d)
    with pytest.raises(ValueError, match="line 1"):
        parse_region_prompts("no colon here", d)


# --- node definitions ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(comfy_nodes.NODE_CLASS_MAPPINGS))
def test_node_definitions_follow_the_classic_api(name):
    cls = comfy_nodes.NODE_CLASS_MAPPINGS[name]
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"}
    assert cls.CATEGORY == "Q-DeepSight"
    assert name in comfy_nodes.NODE_DISPLAY_NAME_MAPPINGS
    params = inspect.signature(getattr(cls, cls.FUNCTION)).parameters
    for section in ("required", "optional"):
        for input_name, input_spec in spec.get(section, {}).items():
            assert input_spec[1].get("tooltip"), f"{name}.{input_name} has no tooltip"
            assert input_name in params, f"{name}.{cls.FUNCTION} does not take {input_name}"
            if section == "optional":
                assert params[input_name].default is not inspect.Parameter.empty
    names = getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)
    assert len(names) == len(cls.RETURN_TYPES)
    if cls.RETURN_TYPES:
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES)


def test_each_refine_node_defaults_to_its_refiners_margin():
    from pig.refiners import load_refiner

    nodes = comfy_nodes.NODE_CLASS_MAPPINGS
    classical = nodes["PiGRefineClassical"].INPUT_TYPES()["required"]["min_gain"][1]["default"]
    assert classical == load_refiner("classical").margin == 0.02
    diffusion = [n for n in nodes if n.startswith("PiGRefine") and n != "PiGRefineClassical"]
    assert diffusion and all(
        nodes[n].INPUT_TYPES()["required"]["min_gain"][1]["default"] == 0.05 for n in diffusion
    )


def test_pack_registration_loads_no_model_library():
    """Import the pack the way ComfyUI does (a folder in custom_nodes) in a clean interpreter."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('qds_pack', {str(REPO / '__init__.py')!r})\n"
        "mod = importlib.util.module_from_spec(spec); sys.modules['qds_pack'] = mod; spec.loader.exec_module(mod)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('diffusers', 'transformers', 'accelerate'))\n"
        "print(len(mod.NODE_CLASS_MAPPINGS), heavy, hasattr(mod, 'comfy_entrypoint'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(len(comfy_nodes.NODE_CLASS_MAPPINGS)), "[]", "False"]


def test_load_assessor_node_defaults_to_the_learned_critic(sample_rgb):
    """The node's default backend is the learned critic (the CLI's default too); classical stays."""
    from assessor.backends import DEFAULT_BACKEND

    spec = LoadQDeepSightAssessor.INPUT_TYPES()["required"]
    names, options = spec["backend"]
    assert options["default"] == "learned" == DEFAULT_BACKEND and names == BACKEND_NAMES
    assert names[0] == "learned" and "classical" in names
    assert "not better than classical" not in options["tooltip"]
    # what a freshly placed node holds: each widget's default, or a list's first entry
    defaults = {
        key: value[1]["default"] if "default" in value[1] else value[0][0] for key, value in spec.items()
    }
    (critic,) = LoadQDeepSightAssessor().load(**{**defaults, "device": "cpu"})
    try:
        d = critic.assess(sample_rgb)
    finally:
        critic.close()
    assert d.backend == "learned" and 1.0 <= d.score <= 5.0
    assert d.regions and all(
        0 <= r.bbox[0] < r.bbox[2] <= 512 and 0 <= r.bbox[1] < r.bbox[3] <= 512 for r in d.regions
    )
    assert {r.distortion for r in d.regions} >= {"noise"}  # the sample's noisy patch


def test_assessor_options_per_backend():
    assert assessor_options("classical", None, "cuda", "float16", "") == {}
    assert assessor_options("learned", None, "auto", "auto", "") == {}
    assert assessor_options("learned", "/w.safetensors", "cpu", "auto", "") == {
        "weights": "/w.safetensors",
        "device": "cpu",
    }
    assert assessor_options("vlm", "/m", "auto", "auto", "") == {"model": "/m"}
    assert assessor_options("vlm", "/m", "cuda", "bfloat16", "") == {
        "model": "/m",
        "device": "cuda",
        "dtype": "bfloat16",
    }
    assert assessor_options("openai", "q", "auto", "auto", " http://x/v1 ") == {
        "model": "q",
        "base_url": "http://x/v1",
    }
    with pytest.raises(ValueError, match="needs a model"):
        assessor_options("vlm", None, "auto", "auto", "")
    with pytest.raises(ValueError, match="base_url"):
        assessor_options("openai", "q", "auto", "auto", "")


def test_model_folders_through_a_folder_paths_module(tmp_path, monkeypatch):
    models = tmp_path / "models"
    (models / "qdeepsight" / "critic-7b").mkdir(parents=True)
    (models / "qdeepsight" / "critic-7b" / "config.json").write_text("{}")
    (models / "LLM" / "org" / "Qwen2.5-VL-3B").mkdir(parents=True)
    (models / "LLM" / "org" / "Qwen2.5-VL-3B" / "config.json").write_text("{}")
    (models / "LLM" / "not-a-model").mkdir()
    (models / "checkpoints").mkdir()
    (models / "checkpoints" / "sdxl.safetensors").write_bytes(b"")
    fake = types.ModuleType("folder_paths")
    fake.models_dir = str(models)
    fake.folder_names_and_paths = {"checkpoints": ([str(models / "checkpoints")], {".safetensors"})}

    def add_model_folder_path(name, path):
        fake.folder_names_and_paths.setdefault(name, ([], set()))[0].append(path)

    fake.add_model_folder_path = add_model_folder_path
    fake.get_folder_paths = lambda name: list(fake.folder_names_and_paths[name][0])
    fake.get_filename_list = lambda name: sorted(
        p.name for root in fake.folder_names_and_paths[name][0] for p in Path(root).iterdir()
    )
    fake.get_full_path = lambda name, f: next(
        (str(Path(r) / f) for r in fake.folder_names_and_paths[name][0] if (Path(r) / f).is_file()), None
    )
    monkeypatch.setitem(sys.modules, "folder_paths", fake)
    model_paths.register_model_folders()
    assert fake.folder_names_and_paths["qdeepsight"][0] == [str(models / "qdeepsight")]
    assert model_paths.vlm_model_choices() == [model_paths.NO_MODEL, "critic-7b", "org/Qwen2.5-VL-3B"]
    assert model_paths.resolve_vlm_model("org/Qwen2.5-VL-3B", "") == str(
        models / "LLM" / "org" / "Qwen2.5-VL-3B"
    )
    assert (
        model_paths.resolve_vlm_model("critic-7b", " Qwen/Qwen2.5-VL-7B-Instruct ")
        == "Qwen/Qwen2.5-VL-7B-Instruct"
    )
    assert model_paths.resolve_vlm_model(model_paths.NO_MODEL, "") is None
    with pytest.raises(FileNotFoundError, match="refresh"):
        model_paths.resolve_vlm_model("gone", "")
    assert model_paths.sdxl_choices() == [model_paths.NO_MODEL, "sdxl.safetensors"]
    assert model_paths.resolve_sdxl("sdxl.safetensors", "") == str(
        models / "checkpoints" / "sdxl.safetensors"
    )
    assert "critic-7b" in LoadQDeepSightAssessor.INPUT_TYPES()["required"]["model"][0]


def test_outside_comfyui_model_lists_are_empty(monkeypatch):
    monkeypatch.setitem(sys.modules, "folder_paths", None)  # import fails
    assert model_paths.vlm_model_choices() == [model_paths.NO_MODEL]
    assert model_paths.sdxl_choices() == [model_paths.NO_MODEL]


# --- the nodes' logic, called directly --------------------------------------------------------------


def test_assess_node_batch(sample_rgb, classical):
    flipped = np.ascontiguousarray(sample_rgb[:, ::-1])
    batch = rgb8_to_image_batch([sample_rgb, flipped])
    score, diagnosis, mask, preview = AssessImageQuality().assess(classical, batch, 0.15)
    diagnoses = parse_diagnoses(diagnosis)
    direct = [classical.assess(sample_rgb), classical.assess(flipped)]
    assert [d.score for d in diagnoses] == [d.score for d in direct]
    assert score == pytest.approx(sum(d.score for d in direct) / 2)
    assert mask.shape == (2, 512, 512) and preview.shape == (2, 512, 512, 3)
    for i, d in enumerate(direct):
        expected = regions_mask(d, 512, 512, min_severity=0.15)
        np.testing.assert_array_equal(mask[i].numpy(), expected)
    assert mask[0].sum() > 0
    assert not torch.equal(preview[0], batch[0])  # boxes drawn


def test_plan_node_masks_prompts_and_user_mask(sample_rgb, classical):
    d = classical.assess(sample_rgb)
    assert d.regions, "the sample must have diagnosed regions"
    text = dump_diagnoses([d])
    mask, positive, negative, plan_json = PiGPlan().plan(text, "an astronaut", "lowres", 0.15, "diffusion")
    expected = make_plan(d, prompt="an astronaut", negative_prompt="lowres", global_operation="img2img")
    assert mask.shape == (1, 512, 512)
    np.testing.assert_array_equal(mask[0].numpy(), expected.mask())
    assert positive.startswith("an astronaut") and negative.startswith("lowres")
    for rp in expected.regions:
        assert set(rp.positive.split(", ")) <= set(positive.split(", "))
    assert len(json.loads(plan_json)["regions"]) == len(expected.regions)
    # ComfyUI's LoadImage gives an all-zero 64x64 mask when nothing was painted: that is "no mask"
    same = PiGPlan().plan(text, "an astronaut", "lowres", 0.15, "diffusion", mask=torch.zeros(1, 64, 64))
    assert torch.equal(same[0], mask)
    x0, y0, x1, y1 = expected.regions[0].region.bbox
    user = torch.zeros(1, 512, 512)
    user[0, y0:y1, x0:x1] = 1.0
    narrowed = PiGPlan().plan(text, "", "", 0.15, "diffusion", mask=user, mask_mode="narrow")[0]
    assert float(narrowed[0][user[0] == 0].max()) == 0.0 and float(narrowed.max()) == 1.0


@pytest.mark.parametrize("critic", ["learned", "classical"])
def test_refine_classical_node_changes_only_planned_places_and_never_lowers_the_score(
    sample_rgb, critic, request
):
    image = as_image(sample_rgb)
    critic = request.getfixturevalue(critic)
    out, score, history, report = PiGRefineClassical().refine(image, critic, 0, 3, 1, 0.05, 0.15)
    data = json.loads(report)
    assert out.shape == image.shape and out.dtype == torch.float32
    assert score == pytest.approx(data["final_score"], abs=1e-4)
    assert data["final_score"] >= data["initial_score"]
    assert history.startswith(f"{data['initial_score']:.2f}") and data["stop_reason"] in history
    allowed = np.zeros((512, 512), bool)
    for record in data["history"]:
        if record["accepted"]:
            d = Diagnosis.from_dict(
                {"score": record["score_before"], "regions": record["regions"], "image_size": [512, 512]}
            )
            allowed |= make_plan(d, min_severity=0.0).mask() > 0
    changed = (out[0] != image[0]).any(dim=-1).numpy()
    assert not changed[~allowed].any(), "pixels outside the planned masks changed"
    if data["accepted"]:
        assert changed.any()


def test_refine_batch_is_per_image_deterministic(sample_rgb, classical):
    flipped = np.ascontiguousarray(sample_rgb[:, ::-1])
    batch = rgb8_to_image_batch([sample_rgb, flipped])
    out, _, history, report = PiGRefineClassical().refine(batch, classical, 7, 2, 1, 0.05, 0.15)
    alone, *_ = PiGRefineClassical().refine(batch[1:], classical, 7, 2, 1, 0.05, 0.15)
    assert out.shape == (2, 512, 512, 3) and len(json.loads(report)) == 2
    assert history.count("image ") == 2
    assert torch.equal(out[1], alone[0])


def test_format_history():
    rec = types.SimpleNamespace(score_after=3.4, accepted=True)
    bad = types.SimpleNamespace(score_after=3.3, accepted=False)
    result = types.SimpleNamespace(
        initial_score=3.1, final_score=3.4, stop_reason="plateau", history=[rec, bad]
    )
    assert format_history(result) == "3.10 -> 3.40 kept -> 3.30 rolled back; final 3.40 (plateau)"


def test_configure_sdxl_sets_known_attribute_names():
    refiner = types.SimpleNamespace(steps=30, guidance_scale=5.0, guide_size=768)
    configure_sdxl(refiner, steps=12, guidance_scale=3, guide_size=256)
    assert (refiner.steps, refiner.guidance_scale, refiner.guide_size) == (12, 3.0, 256)
    assert isinstance(refiner.guidance_scale, float)
    with pytest.raises(AttributeError, match="update pig"):
        configure_sdxl(types.SimpleNamespace(), steps=1)


def test_save_text_json_and_text_never_overwrite(tmp_path):
    a = save_text('{"b": 1}', str(tmp_path), "pig/report")
    b = save_text('{"b": 2}', str(tmp_path), "pig/report")
    c = save_text("3.10 -> 3.40", str(tmp_path), "pig/history")
    assert Path(a).name == "report_00001_.json" and Path(b).name == "report_00002_.json"
    assert json.loads(Path(b).read_text()) == {"b": 2}
    assert Path(c).suffix == ".txt" and Path(c).read_text() == "3.10 -> 3.40\n"


# --- ComfyUI hooks and the sampler refiner with stand-ins for ComfyUI's modules -------------------


def fake_comfy(monkeypatch):
    """Stand-ins for the few ComfyUI functions the pack calls, recording how they were called."""
    calls: dict[str, list] = {"bar": [], "ksampler": [], "inpaint_cond": []}

    class ProgressBar:
        def __init__(self, total):
            self.total = total

        def update_absolute(self, value, total=None, preview=None):
            calls["bar"].append((value, total))

    class Interrupted(Exception):
        pass

    state = {"interrupt": False}

    def throw_exception_if_processing_interrupted():
        if state["interrupt"]:
            raise Interrupted()

    def common_ksampler(
        model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent, denoise=1.0
    ):
        calls["ksampler"].append(
            dict(seed=seed, steps=steps, denoise=denoise, latent=latent, positive=positive)
        )
        return ({**latent, "samples": latent["samples"] * 0.0 + 1.0},)

    class InpaintModelConditioning:
        def encode(self, positive, negative, pixels, vae, mask):
            calls["inpaint_cond"].append(tuple(mask.shape))
            return positive, negative, {"samples": vae.encode(pixels), "noise_mask": mask}

    comfy = types.ModuleType("comfy")
    comfy.utils = types.SimpleNamespace(ProgressBar=ProgressBar)
    comfy.model_management = types.SimpleNamespace(
        throw_exception_if_processing_interrupted=throw_exception_if_processing_interrupted
    )
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.utils", comfy.utils)
    monkeypatch.setitem(sys.modules, "comfy.model_management", comfy.model_management)
    nodes = types.ModuleType("nodes")
    nodes.common_ksampler = common_ksampler
    nodes.InpaintModelConditioning = InpaintModelConditioning
    monkeypatch.setitem(sys.modules, "nodes", nodes)
    return calls, state, Interrupted


class FakeVAE:
    """Latents are the image at 1/8 size; decoding paints everything white."""

    def encode(self, pixels):
        assert pixels.ndim == 4 and pixels.shape[-1] == 3
        return torch.nn.functional.avg_pool2d(pixels.movedim(-1, 1), 8)[:, :3].repeat(1, 2, 1, 1)[:, :4]

    def decode(self, samples):
        b, _, h, w = samples.shape
        return torch.ones(b, h * 8, w * 8, 3)


class FakeCLIP:
    def __init__(self):
        self.encoded = []

    def tokenize(self, text):
        return text

    def encode_from_tokens(self, tokens, return_pooled=False):
        self.encoded.append(tokens)
        return torch.zeros(1, 77, 8), torch.zeros(1, 8)


def fake_model(inpaint: bool):
    config = types.SimpleNamespace(inpaint_model=lambda: inpaint)
    return types.SimpleNamespace(model=types.SimpleNamespace(model_config=config, inpaint_model=inpaint))


def test_progress_and_cancel_hooks_drive_comfyui(monkeypatch):
    calls, state, interrupted = fake_comfy(monkeypatch)
    bar = RoundProgress(images=2, max_iters=4)
    bar.start_image(1)
    bar(0, 4, None)
    bar(2, 4, None)
    bar.finish_image()
    assert calls["bar"] == [(4, 8), (4, 8), (6, 8), (8, 8)]
    check = interrupt_check()
    assert check() is False
    state["interrupt"] = True
    with pytest.raises(interrupted):
        check()


def test_hooks_are_no_ops_outside_comfyui(monkeypatch):
    monkeypatch.setitem(sys.modules, "comfy", None)
    RoundProgress(1, 2)(1, 2, None)
    assert interrupt_check()() is False


@pytest.mark.parametrize("inpaint", [False, True])
def test_sampler_refiner_crops_enlarges_samples_and_pastes_inside_the_mask(monkeypatch, inpaint):
    calls, _, _ = fake_comfy(monkeypatch)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 200, (200, 300, 3), dtype=np.uint8)
    d = Diagnosis(
        score=2.0, regions=[Region([100, 60, 140, 100], "blur", 1.0, "soft")], image_size=(300, 200)
    )
    plan = make_plan(d, prompt="a cat", global_operation="img2img")
    clip = FakeCLIP()
    settings_ = SamplerSettings(steps=3, denoise=0.4, guide_size=256, max_size=512)
    refiner = ComfySamplerRefiner(fake_model(inpaint), clip, FakeVAE(), settings_)
    out = refiner.refine(image, plan, seed=5)
    mask = plan.regions[0].mask
    assert out.shape == image.shape
    np.testing.assert_array_equal(out[mask == 0], image[mask == 0])
    assert (out[mask == 1] == 255).all()  # the fake decoder paints white
    (call,) = calls["ksampler"]
    assert call["seed"] == 5 and call["steps"] == 3
    assert call["denoise"] == pytest.approx(min(plan.regions[0].strength, 0.4))
    (info,) = refiner.last_info["regions"]
    x0, y0, x1, y1 = info["crop"]
    assert x0 <= 100 and y0 <= 60 and x1 >= 140 and y1 >= 100
    w, h = info["working_size"]
    assert min(w, h) == 256 and w % 8 == 0 and h % 8 == 0  # short side enlarged to guide_size
    assert call["latent"]["samples"].shape[-2:] == (h // 8, w // 8)
    assert info["conditioning"] == ("InpaintModelConditioning" if inpaint else "noise_mask")
    assert calls["inpaint_cond"] == ([(1, h, w)] if inpaint else [])
    if not inpaint:
        assert call["latent"]["noise_mask"].shape == (1, 1, h, w)
    assert plan.regions[0].positive in clip.encoded and refiner.last_info["inpaint_model"] is inpaint
    refiner.refine(image, plan, seed=5)
    assert len(clip.encoded) == 2  # prompts encoded once, reused every round


def test_sampler_refiner_img2img_for_whole_image_defects(monkeypatch):
    calls, _, _ = fake_comfy(monkeypatch)
    image = np.full((64, 96, 3), 100, np.uint8)
    d = Diagnosis(score=2.0, regions=[Region([0, 0, 96, 64], "low_contrast", 0.5)], image_size=(96, 64))
    plan = make_plan(d, global_operation="img2img")
    assert plan.regions[0].operation == "img2img"
    refiner = ComfySamplerRefiner(
        fake_model(False), FakeCLIP(), FakeVAE(), SamplerSettings(guide_size=128, max_size=256)
    )
    out = refiner.refine(image, plan)
    assert "noise_mask" not in calls["ksampler"][0]["latent"] and (out == 255).all()
    assert refiner.last_info["regions"][0]["working_size"] == [192, 128]


def test_denoise_policy_and_inpaint_detection():
    s = SamplerSettings(denoise=0.5)
    assert region_denoise(0.3, s) == 0.3 and region_denoise(0.9, s) == 0.5
    assert region_denoise(0.3, SamplerSettings(denoise=0.7, strength_from_severity=False)) == 0.7
    assert is_inpaint_model(fake_model(True)) and not is_inpaint_model(fake_model(False))
    old_style = types.SimpleNamespace(model=types.SimpleNamespace(inpaint_model=True))
    assert is_inpaint_model(old_style)


def test_load_assessor_node_builds_the_vlm_backend_from_a_local_folder(tmp_path):
    from assessor.vlm.tiny import save_tiny_qwen

    folder = save_tiny_qwen(tmp_path / "tiny-qwen")
    (critic,) = LoadQDeepSightAssessor().load("vlm", model_paths.NO_MODEL, str(folder), "cpu", "float32", "")
    try:
        assert type(critic).__name__ == "VLMAssessor"
        assert next(critic.model.parameters()).dtype == torch.float32
    finally:
        critic.close()


def test_model_folder_lists_are_memoised_until_a_folder_changes(tmp_path, monkeypatch):
    root = tmp_path / "qdeepsight"
    (root / "a").mkdir(parents=True)
    (root / "a" / "config.json").write_text("{}")
    walks = []
    real_walk = os.walk
    monkeypatch.setattr(model_paths.os, "walk", lambda *a, **k: walks.append(a[0]) or real_walk(*a, **k))
    assert model_paths.model_folders([str(root)]) == ["a"]
    assert model_paths.model_folders([str(root)]) == ["a"]
    assert len(walks) == 1  # the second call only stat-ed the folders
    (root / "b").mkdir()
    (root / "b" / "config.json").write_text("{}")
    os.utime(root, (1, 1))  # some file systems keep the mtime within a second: force a change
    assert model_paths.model_folders([str(root)]) == ["a", "b"]
    assert len(walks) == 2
