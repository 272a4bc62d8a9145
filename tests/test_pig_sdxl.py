"""The sdxl refiner on tiny random SDXL models built offline: crop-inpaint and img2img through the
real diffusers pipelines, from_pretrained and from_single_file loading, clear errors."""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from tiny_sdxl import build_tiny_sdxl, write_tiny_single_file  # noqa: E402

from assessor.schema import Diagnosis, Region  # noqa: E402
from pig.plan import make_plan  # noqa: E402
from pig.refiners import RefinerError, load_refiner  # noqa: E402

W, H = 128, 96
FAST = dict(device="cpu", steps=2, guide_size=64, max_size=128)


@pytest.fixture(scope="module", autouse=True)
def offline():
    import huggingface_hub.constants as c

    old = c.HF_HUB_OFFLINE
    c.HF_HUB_OFFLINE = True
    yield
    c.HF_HUB_OFFLINE = old


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-sdxl")
    base = build_tiny_sdxl(root / "base")
    inpaint = build_tiny_sdxl(root / "inpaint", inpaint=True, seed=5)
    return {
        "base": base,
        "inpaint": inpaint,
        "base_file": write_tiny_single_file(root / "base.safetensors", base),
        "inpaint_file": write_tiny_single_file(root / "inpaint.safetensors", inpaint),
    }


@pytest.fixture(scope="module")
def image():
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.stack([xx * 2, yy * 2, (xx + yy)], axis=2) % 256
    return img.astype(np.uint8)


def local_plan(refiner, **kw):
    d = Diagnosis(3.0, [Region([40, 30, 80, 70], "noise", 0.6, "grain")], image_size=(W, H))
    return make_plan(
        d, global_operation=refiner.global_operation, strengths=refiner.strengths, prompt="a wall", **kw
    )


def global_plan(refiner):
    d = Diagnosis(3.0, [Region([0, 0, W, H], "blur", 0.5, "soft")], image_size=(W, H))
    return make_plan(d, global_operation=refiner.global_operation, strengths=refiner.strengths)


@pytest.fixture(scope="module")
def base_refiner(models):
    return load_refiner("sdxl", model=str(models["base"]), **FAST)


def test_crop_inpaint_changes_only_the_mask_and_is_deterministic(base_refiner, image):
    plan = local_plan(base_refiner)
    rp = plan.regions[0]
    assert rp.operation == "inpaint" and 0.3 <= rp.strength <= 0.65 and "a wall" in rp.positive
    out = base_refiner.refine(image, plan, seed=3)
    assert out.shape == image.shape and out.dtype == np.uint8
    mask = plan.mask()
    assert np.array_equal(out[mask == 0], image[mask == 0])  # bit for bit outside
    assert np.abs(out[mask == 1].astype(int) - image[mask == 1]).mean() > 1.0  # inpainted inside
    info = base_refiner.last_info[0]
    x0, y0, x1, y1 = info["crop"]
    assert (x1 - x0) % 8 == 0 and (y1 - y0) % 8 == 0 and x0 <= 40 - 32 + 8 and x1 >= 80
    assert min(info["work_size"]) >= 64 and all(v % 8 == 0 for v in info["work_size"])
    assert np.array_equal(out, base_refiner.refine(image, plan, seed=3))
    assert not np.array_equal(out, base_refiner.refine(image, plan, seed=4))


def test_whole_image_pass_is_img2img_sharing_components(base_refiner, image):
    assert base_refiner.img2img_pipe.unet is base_refiner.inpaint_pipe.unet
    assert base_refiner.img2img_pipe.vae is base_refiner.inpaint_pipe.vae
    plan = global_plan(base_refiner)
    assert plan.regions[0].operation == "img2img" and plan.regions[0].strength <= 0.4
    calls = []
    original = base_refiner._run_img2img
    base_refiner._run_img2img = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        out = base_refiner.refine(image, plan, seed=0)
    finally:
        base_refiner._run_img2img = original
    assert calls == [1] and out.shape == image.shape and not np.array_equal(out, image)


def test_single_file_checkpoint_loads_the_same_weights(models, image):
    from diffusers import UNet2DConditionModel

    r = load_refiner("sdxl", model=str(models["base_file"]), config=str(models["base"]), **FAST)
    ref = UNet2DConditionModel.from_pretrained(models["base"] / "unet", local_files_only=True).state_dict()
    got = r.inpaint_pipe.unet.state_dict()
    assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
    assert not r.is_inpaint_model
    out = r.refine(image, local_plan(r), seed=1)
    assert out.shape == image.shape


def test_dedicated_inpainting_model_single_file(models, image):
    r = load_refiner("sdxl", model=str(models["inpaint_file"]), config=str(models["inpaint"]), **FAST)
    assert r.is_inpaint_model and r.inpaint_pipe.unet.config.in_channels == 9
    assert r.img2img_pipe is None  # whole-image passes go through the inpainting pipeline, full mask
    out = r.refine(image, global_plan(r), seed=0)
    assert out.shape == image.shape and not np.array_equal(out, image)
    plan = local_plan(r)
    out = r.refine(image, plan, seed=0)
    assert np.array_equal(out[plan.mask() == 0], image[plan.mask() == 0])


def test_loading_errors_are_one_line_and_name_the_fix(models, tmp_path):
    from safetensors.torch import save_file

    def err(**kw):
        with pytest.raises(RefinerError) as info:
            load_refiner("sdxl", **{"device": "cpu", **kw})
        msg = str(info.value)
        assert "\n" not in msg
        return msg

    assert "no such" in err(model=str(tmp_path / "missing.safetensors"))
    assert "no such file or folder" in err(model=str(tmp_path / "nothing-here"))
    assert "model_index.json" in err(model=str(tmp_path))
    (tmp_path / "sd15").mkdir()
    (tmp_path / "sd15" / "model_index.json").write_text(
        json.dumps({"_class_name": "StableDiffusionPipeline"})
    )
    assert "not SDXL" in err(model=str(tmp_path / "sd15"))
    sd15 = tmp_path / "sd15.safetensors"
    save_file(
        {
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3),
            "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": torch.zeros(
                77, 8
            ),
        },
        str(sd15),
    )
    assert "Stable Diffusion 1.x/2.x" in err(model=str(sd15))
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.alpha": torch.zeros(1)}, str(lora))
    assert "LoRA" in err(model=str(lora))
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"x")
    assert ".safetensors" in err(model=str(ckpt))
    assert "inpainting" in err(model=str(models["inpaint_file"]), config=str(models["base"]))
    assert "offline" in err(model="someone/not-cached-sdxl")
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in err(model=str(models["base"]), device="cuda")
    assert "unknown scheduler" in err(model=str(models["base"]), scheduler="nope")


def test_options_scheduler_and_dtype(models):
    r = load_refiner("sdxl", model=str(models["base"]), scheduler="dpmpp_2m_karras", dtype="float32", **FAST)
    assert type(r.inpaint_pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert r.inpaint_pipe.scheduler.config.use_karras_sigmas
    assert r.inpaint_pipe.unet.dtype == torch.float32


def test_cli_runs_the_sdxl_refiner_end_to_end(models, image, tmp_path):
    from PIL import Image

    from pig.run import main

    src = tmp_path / "in.png"
    Image.fromarray(image).save(src)
    out = tmp_path / "out.png"
    report = tmp_path / "r.json"
    args = [str(src), "-o", str(out), "--report", str(report), "--sdxl", str(models["base"]), "--quiet"]
    args += ["--device", "cpu", "--steps", "2", "--guide-size", "64", "--max-size", "128", "--max-iters", "1"]
    assert main(args) == 0
    rep = json.loads(report.read_text())
    assert rep["refiner"] == "sdxl" and out.is_file()
    assert np.asarray(Image.open(out)).shape == image.shape
    assert main([str(src), "-o", str(out), "--sdxl", str(tmp_path / "missing.safetensors")]) == 2


def test_gpu_timing_script_runs_its_tiny_path_on_the_cpu(tmp_path):
    from pig.bench_sdxl_gpu import main

    out = tmp_path / "t.json"
    assert main(["--tiny", "--repeats", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["tiny"] and res["image"] == 128 and res["region"] == 32
    assert res["crop_inpaint_s"] > 0 and res["whole_inpaint_s"] > 0 and res["img2img_whole_s"] > 0
    assert res["whole_work_size"] == [128, 128] and min(res["crop_work_size"]) == 64
