"""The learned critic as a backend: an honest look-then-zoom loop, robust inputs, the CLI contract."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from assessor import benchdata, load_assessor
from assessor.backends import BACKENDS
from assessor.degrade import apply_distortion, degrade_region
from assessor.imageio import load_image
from assessor.schema import Diagnosis
from assessor.zoom import box_iou

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def critic():
    return load_assessor("learned", device="cpu")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return benchdata.load_photo("astronaut")


def centre_inside(region_box, true_box) -> bool:
    cx, cy = (region_box[0] + region_box[2]) / 2, (region_box[1] + region_box[3]) / 2
    return true_box[0] <= cx < true_box[2] and true_box[1] <= cy < true_box[3]


def confirmed_classical_lead(d: Diagnosis):
    """The trace step where a classical critic's lead was zoomed on and confirmed."""
    return next(
        s for s in d.trace if "to the classical cues" in s.thought and s.observation.startswith("Confirmed")
    )


def assert_counts_on_the_judges_reading(critic, img, kind, box, seen, **without):
    """The worst region is ``kind`` on ``box``, confirmed from a classical lead whose observation
    says ``seen``; with the ``without`` option(s) the learned critic does not report it so."""
    d = critic.assess(img)
    assert d.worst.distortion == kind and box_iou(d.worst.bbox, box) >= 0.5, d.regions
    step = confirmed_classical_lead(d)
    assert step.data["classical"][0] == kind and seen in step.observation
    old = load_assessor("learned", device="cpu", **without).assess(img).worst
    assert old is None or old.distortion != kind


def test_registered_as_a_backend():
    assert "learned" in BACKENDS and "brisque" in BACKENDS


def test_clean_photo_scores_high_with_nothing_severe(critic, astronaut):
    d = critic.assess(astronaut)
    assert isinstance(d, Diagnosis) and d.backend == "learned" and d.image_size == (512, 512)
    assert d.score >= 4.3
    assert all(r.severity < 0.5 for r in d.regions), d.regions


@pytest.mark.parametrize("kind", ["noise", "jpeg", "blur", "artifact"])  # what it finds best (README)
def test_finds_a_local_defect_where_and_what_it_is(critic, astronaut, kind):
    box = (260, 40, 460, 220)
    damaged = degrade_region(astronaut, kind, 5, box, np.random.default_rng(1)).image
    d = critic.assess(damaged)
    worst = d.worst
    assert worst is not None and worst.distortion == kind and centre_inside(worst.bbox, box), d.regions
    assert d.score < critic.assess(astronaut).score
    # the trace shows the global look, then a zoom on the region with context, at native pixels
    assert d.trace[0].view == [0, 0, 512, 512] and d.trace[0].tool_call is None
    zooms = [s for s in d.trace if s.tool_call is not None and s.tool_call.name == "crop_zoom"]
    assert zooms and any(s.tool_call.arguments["context"] > 0 for s in zooms)
    assert any(centre_inside(s.tool_call.arguments["bbox_2d"], box) for s in zooms)


@pytest.mark.parametrize("name", ["hopper", "motorcycle"])
def test_a_wide_blur_is_found_by_stepping_back(critic, name):
    # at full size a sigma-6 blur's edges are wider than any the network learned: the look at 320 px
    # finds it, and the zoom re-examines it at the scale it was seen (found at full size: nothing)
    box = (100, 100, 300, 300)
    damaged = degrade_region(benchdata.load_photo(name), "blur", 5, box, np.random.default_rng(0)).image
    d = critic.assess(damaged)
    worst = d.worst
    assert worst is not None and worst.distortion == "blur" and centre_inside(worst.bbox, box), d.regions
    step = next(s for s in d.trace if s.data.get("size"))
    assert max(step.data["size"]) == 320 and step.tool_call is None
    zoom = next(
        s for s in d.trace if s.tool_call is not None and centre_inside(s.tool_call.arguments["bbox_2d"], box)
    )
    assert zoom.tool_call.arguments["target_size"] < zoom.view[2] - zoom.view[0]  # reduced, not native
    # the network's own look at full size (no step back, no classical blur lead) finds nothing
    plain = load_assessor("learned", device="cpu", coarse_look=0, max_cue_leads=0).assess(damaged).worst
    assert plain is None or plain.distortion != "blur"


@pytest.mark.parametrize("kind", ["blur", "noise", "jpeg", "low_contrast"])
def test_score_falls_as_a_global_distortion_grows(critic, astronaut, kind):
    scores = [
        critic.assess(apply_distortion(astronaut, kind, lv, np.random.default_rng(0))).score
        for lv in (1, 3, 5)
    ]
    assert scores[0] > scores[1] > scores[2], scores


def test_heavy_noise_is_graded_by_its_measured_level(critic):
    # the network sees noise but its grade levels off from level 3 on (chelsea: 3.12, 2.95, 3.05
    # for levels 3-5); once it sees the kind, the measured noise sigma says how much
    chelsea = benchdata.load_photo("chelsea")
    ds = [critic.assess(apply_distortion(chelsea, "noise", lv, np.random.default_rng(0))) for lv in (3, 4, 5)]
    scores = [d.score for d in ds]
    assert scores[0] > scores[1] > scores[2], scores
    grade = next(s for s in ds[-1].trace if "cue_damage" in s.data).data
    assert grade["damage"]["noise"] == grade["cue_damage"]["noise"] >= 0.9


def test_hard_negatives_are_not_condemned(critic):
    for kind, make in benchdata.HARD_NEGATIVES.items():
        img = make((512, 384), np.random.default_rng([0, 99]))
        d = critic.assess(img)
        assert all(r.severity < 0.5 for r in d.regions), (kind, d.regions)


@pytest.mark.parametrize("kind", ["underexposure", "low_contrast"])
def test_a_patch_read_off_its_border_counts_on_that_reading(critic, astronaut, kind):
    # the network alone is unsure of a patch's tone; the classical border reading finds the patch
    # and counts; the network's zoom on it is recorded (here it sees the change too)
    box = (260, 40, 460, 220)
    damaged = degrade_region(astronaut, kind, 5, box, np.random.default_rng(1)).image
    d = critic.assess(damaged)
    worst = d.worst
    assert worst is not None and worst.distortion == kind and box_iou(worst.bbox, box) >= 0.9, d.regions
    step = next(s for s in d.trace if "steps the same way all around" in s.thought)
    assert step.tool_call.name == "crop_zoom" and "network_in_ring" in step.data
    assert "the network sees" in step.observation and "inside against" in step.observation
    alone = load_assessor("learned", device="cpu", max_seams=0, max_cue_leads=0).assess(damaged).worst
    assert alone is None
    # were the network's agreement asked for, and impossible to give, the patch would not count
    strict = load_assessor("learned", device="cpu", seam_alone=False, more_inside=100.0)
    worst = strict.assess(damaged).worst
    assert worst is None or worst.distortion != kind


@pytest.mark.parametrize(("name", "box"), [("coffee", (260, 40, 460, 220)), ("chelsea", (60, 60, 260, 200))])
def test_a_tinted_rectangle_counts_on_its_border_reading(critic, name, box):
    # the network never sees a tint (its presences inside and around are equal); the border
    # reading (one colour gain all along the rectangle's border) finds it, and counts alone
    damaged = degrade_region(benchdata.load_photo(name), "color_cast", 4, box, np.random.default_rng(1)).image
    d = critic.assess(damaged)
    worst = d.worst
    assert worst is not None and worst.distortion == "color_cast", d.regions
    assert box_iou(worst.bbox, box) >= 0.9 and worst.severity >= 0.4
    step = next(s for s in d.trace if "steps the same way all around" in s.thought)
    assert step.observation.startswith("Confirmed color_cast")
    assert "the network sees no more change inside than around it" in step.observation
    old = load_assessor("learned", device="cpu", seam_alone=False).assess(damaged).worst
    assert old is None or old.distortion != "color_cast" or box_iou(old.bbox, box) < 0.5


@pytest.mark.parametrize(("kind", "box"), [("jpeg", (260, 40, 460, 220)), ("artifact", (100, 100, 300, 300))])
def test_a_classical_lead_counts_where_the_network_confirms_it_up_close(critic, kind, box):
    # the motorcycle's JPEG-looking texture outranks a compressed or banded patch among the
    # network's leads; the classical cues measure it (8x8 blockiness, grey-level use), the
    # classical judge grades it tile by tile, and the network zoomed on it confirms the type
    damaged = degrade_region(benchdata.load_photo("motorcycle"), kind, 4, box, np.random.default_rng(1)).image
    d = critic.assess(damaged)
    worst = d.worst
    assert worst is not None and worst.distortion == kind and box_iou(worst.bbox, box) >= 0.3, d.regions
    step = confirmed_classical_lead(d)
    assert step.tool_call.name == "crop_zoom" and step.data["network_share"] >= 0.35
    alone = load_assessor("learned", device="cpu", max_cue_leads=0).assess(damaged).worst
    assert alone is None or alone.distortion != kind or box_iou(alone.bbox, box) < 0.3


def test_a_defect_seen_twice_is_reported_once(critic):
    # the network's own zoom finds part of a blown-out patch (0.39), the classical lead all of it
    # (0.80): one region, the more severe reading
    hopper = benchdata.load_photo("hopper")
    img = degrade_region(hopper, "overexposure", 4, (100, 100, 300, 300), np.random.default_rng(1)).image
    img = degrade_region(img, "jpeg", 5, (300, 320, 480, 520), np.random.default_rng(2)).image
    d = critic.assess(img)
    over = [r for r in d.regions if r.distortion == "overexposure"]
    assert len(over) == 1 and over[0].severity >= 0.7, d.regions
    assert [r.distortion for r in d.regions if r.severity >= 0.4] == ["overexposure", "jpeg"]


def test_a_blurred_patch_the_edge_widths_single_out_counts(critic):
    # on the flat moon photo the network's look misses a small blurred patch; the classical edge
    # widths single it out, the classical judge grades it, and the network zoomed on it agrees
    box = (260, 80, 380, 200)
    moon = benchdata.load_photo("moon")
    img = degrade_region(moon, "blur", 4, box, np.random.default_rng(1), shape="ellipse", feather=4.0).image
    d = critic.assess(img)
    worst = d.worst
    assert worst is not None and worst.distortion == "blur" and box_iou(worst.bbox, box) >= 0.5, d.regions
    step = confirmed_classical_lead(d)
    assert step.data["classical"][0] == "blur"
    kinds = tuple(t for t in critic.config.cue_kinds if t != "blur")
    alone = load_assessor("learned", device="cpu", cue_kinds=kinds).assess(img).worst
    assert alone is None or alone.distortion != "blur"


def test_blown_out_patch_counts_where_the_network_sees_more_of_it_inside(critic):
    # the network sees overexposure over too little of a blown-out patch on the Grace Hopper photo
    # to confirm it, but clearly more inside than around: with the clipping measured, that counts
    box = (100, 100, 300, 300)
    img = degrade_region(
        benchdata.load_photo("hopper"), "overexposure", 4, box, np.random.default_rng(1)
    ).image
    d = critic.assess(img)
    worst = d.worst
    assert worst is not None and worst.distortion == "overexposure" and box_iou(worst.bbox, box) >= 0.5, (
        d.regions
    )
    step = confirmed_classical_lead(d)
    p_in, p_ring = step.data["network_in_ring"]
    assert step.data["network_share"] < 0.35 and p_in >= 1.2 * max(p_ring, 0.02)
    # its border reading finds it too, counted alone: ask for the network there as well
    strict = load_assessor("learned", device="cpu", more_inside=100.0, seam_alone=False)
    assert strict.assess(img).worst is None


@pytest.mark.parametrize(
    ("kind", "box"), [("underexposure", (100, 100, 300, 300)), ("low_contrast", (300, 40, 560, 200))]
)
def test_a_soft_edged_tone_patch_counts_where_the_network_sees_a_change(critic, kind, box):
    # a feathered ellipse has no border to read; the classical tone cues single it out, the
    # classical judge types it, and the network zoomed on it sees more of a tone defect inside
    img = benchdata.load_photo("motorcycle")
    damaged = degrade_region(img, kind, 5, box, np.random.default_rng(1), shape="ellipse", feather=4.0).image
    d = critic.assess(damaged)
    worst = d.worst
    assert worst is not None and worst.distortion == kind and box_iou(worst.bbox, box) >= 0.45, d.regions
    step = confirmed_classical_lead(d)
    assert "network_in_ring" in step.data and step.data["classical"][0] == kind
    alone = load_assessor("learned", device="cpu", max_cue_leads=0).assess(damaged).worst
    assert alone is None or alone.distortion != kind


@pytest.mark.parametrize("name", ["camera", "coffee"])
def test_texture_is_not_reported_as_noise(critic, name):
    # grass and wood grain look like noise to the network; the grain cue (white and coloured at
    # pixel scale) says texture, and the lead is dropped: PiG would smooth the detail away to
    # raise the score (it did: -5 to -7 dB on the camera photo's JPEG cases)
    d = critic.assess(benchdata.load_photo(name))
    assert not [r for r in d.regions if r.distortion == "noise"], d.regions
    noise_zooms = [s for s in d.trace if s.tool_call is not None and "looks like noise" in s.thought]
    assert noise_zooms and all(s.observation.startswith("Rejected") for s in noise_zooms)


@pytest.mark.parametrize("name", ["motorcycle", "moon", "rocket"])
def test_texture_without_8x8_blocks_is_not_jpeg(critic, name):
    # the motorcycle's shelves, the moon's craters and the rocket's lit launch pad look like JPEG
    # to the network (0.44-0.55, over half the photo for the motorcycle: that zoom is reduced, and
    # the blockiness vote measures the region's native pixels): no 8x8 grid and no quantization
    # steps there, so the lead is dropped (it was kept at 0.15-0.19 and outranked local defects)
    d = critic.assess(benchdata.load_photo(name))
    assert not [r for r in d.regions if r.distortion == "jpeg"], d.regions
    zooms = [s for s in d.trace if s.tool_call is not None and "looks like jpeg" in s.thought]
    assert zooms and all(s.observation.startswith("Rejected") for s in zooms)
    assert any("hardly any 8x8 block borders" in s.observation for s in zooms)
    assert max(s.data["network_severity"] for s in zooms) >= 0.4


def test_a_jpeg_lead_is_graded_by_its_quantization_steps(critic):
    # the Grace Hopper photo was saved at JPEG quality ~80: blocky-looking to the network in places
    # (0.44), mild by its quantization steps, which grade it, as they grade the whole image
    d = critic.assess(benchdata.load_photo("hopper"))
    assert not [r for r in d.regions if r.distortion == "jpeg"], d.regions
    graded = [s for s in d.trace if "quantized as by JPEG quality" in s.observation]
    assert graded and all(s.observation.startswith("Too mild") for s in graded)
    assert all(s.data["network_severity"] >= 0.3 for s in graded)
    assert d.score >= 4.6


def test_a_dark_part_of_the_scene_is_not_a_local_underexposure(critic):
    # the rocket photo's launch tower is dark; the network calls it underexposed, as dark inside
    # the zoom as around it (0.60 / 0.57): the scene's own tones, not a patch that went dark
    d = critic.assess(benchdata.load_photo("rocket"))
    assert not [r for r in d.regions if r.distortion == "underexposure"], d.regions
    assert all(r.severity < 0.5 for r in d.regions), d.regions


@pytest.mark.parametrize("name", ["camera", "moon"])
def test_a_tinted_ellipse_counts_on_the_classical_judges_reading(name):
    # a soft-edged tint has no straight border to read and the network never sees a tint: the
    # classical critic's lead, judged by its measurements (greyest pixels and mean shifted alike),
    # counts (the search for soft round borders, off here, finds the moon's by its border first)
    critic = load_assessor("learned", device="cpu", soft_patches=0)
    box = (80, 340, 260, 470)
    img = degrade_region(
        benchdata.load_photo(name),
        "color_cast",
        4,
        box,
        np.random.default_rng(1),
        shape="ellipse",
        feather=4.0,
    ).image
    assert_counts_on_the_judges_reading(
        critic, img, "color_cast", box, "never sees a tint", tint_alone=False, soft_patches=0
    )


def test_a_tone_over_most_of_the_image_is_not_a_local_finding(critic):
    # the network sees the darkened moon as underexposed over 94% of the photo; a zoom on nearly
    # the whole image has no surroundings to compare with, so it is the whole-image grade's (it
    # was reported as a 0.63 local box and outranked the darkened rectangle)
    box = (126, 69, 298, 225)
    img = degrade_region(
        benchdata.load_photo("moon"), "underexposure", 3, box, np.random.default_rng(1)
    ).image
    d = critic.assess(img)
    h, w = img.shape[:2]
    local = [r for r in d.regions if r.distortion == "underexposure"]
    assert local and all((r.bbox[2] - r.bbox[0]) * (r.bbox[3] - r.bbox[1]) < 0.5 * w * h for r in local)
    assert d.worst.distortion == "underexposure" and box_iou(d.worst.bbox, box) >= 0.9, d.regions
    wide = [s for s in d.trace if "looks like underexposure" in s.thought and "94% of the image" in s.thought]
    assert wide and wide[0].observation.startswith("Rejected")


def test_a_blurred_background_next_to_sharp_detail_is_depth_of_field(critic):
    # the step back sees the soft background of a shallow depth-of-field scene as the blur it knows;
    # the classical edge widths (sharp detail next to a mapped soft area) vote it down, as they do
    # in the classical critic
    img = benchdata.HARD_NEGATIVES["dof"]((512, 384), np.random.default_rng([0, 99]))
    d = critic.assess(img)
    assert all(r.severity < 0.5 for r in d.regions), d.regions
    assert any("intended depth of field" in s.observation for s in d.trace)


def test_large_image_is_looked_at_reduced_then_peeked_at_native(critic, astronaut):
    big = np.ascontiguousarray(np.tile(astronaut, (2, 2, 1)))  # 1024 x 1024
    noisy = apply_distortion(big, "noise", 2, np.random.default_rng(0))
    d = critic.assess(noisy)
    assert "seen at 640x640" in d.trace[0].thought
    peek = d.trace[1]
    assert peek.tool_call.arguments["target_size"] is None  # native pixels
    assert d.score < critic.assess(big).score


@pytest.mark.parametrize(
    "image",
    [
        np.full((16, 16, 3), 128, np.uint8),
        np.random.default_rng(0).integers(0, 256, (37, 53), dtype=np.uint8),  # grey, odd size
        np.random.default_rng(1).random((40, 70, 3)).astype(np.float32),  # float 0..1
        np.random.default_rng(2).integers(0, 65536, (48, 48, 4), dtype=np.uint16),  # 16-bit with alpha
    ],
    ids=["tiny", "grey-odd", "float", "uint16-rgba"],
)
def test_any_input_array(critic, image):
    d = critic.assess(image)
    assert d.image_size == (image.shape[1], image.shape[0])
    assert 1.0 <= d.score <= 5.0
    for r in d.regions:
        assert 0 <= r.bbox[0] < r.bbox[2] <= image.shape[1] and 0 <= r.bbox[1] < r.bbox[3] <= image.shape[0]


def test_same_image_same_diagnosis(critic, astronaut):
    img = degrade_region(astronaut, "blur", 4, (100, 100, 300, 300)).image
    assert critic.assess(img).to_dict()["regions"] == critic.assess(img).to_dict()["regions"]


def test_bad_options_fail_clearly(tmp_path):
    with pytest.raises(RuntimeError, match="not found.*train_embedded"):
        load_assessor("learned", model=str(tmp_path / "none.safetensors"))
    with pytest.raises(ValueError, match="float32"):
        load_assessor("learned", dtype="float16")
    with pytest.raises(TypeError, match="unknown learned-critic option"):
        load_assessor("learned", look_sise=512)
    with pytest.raises(ValueError, match="confirm_global takes blur, noise or jpeg"):
        load_assessor("learned", confirm_global=("color_cast",))


def test_brisque_baseline_gives_a_global_score(astronaut):
    b = load_assessor("brisque")
    clean, bad = b.assess(astronaut), b.assess(apply_distortion(astronaut, "noise", 5))
    assert 1.0 <= bad.score < clean.score <= 5.0 and clean.regions == []


def test_cli_contract_with_the_learned_backend(tmp_path, astronaut):
    noisy = degrade_region(astronaut, "noise", 5, (260, 40, 460, 220), np.random.default_rng(1)).image
    paths = [tmp_path / "noisy.png", tmp_path / "clean.png", tmp_path / "notes.png"]
    Image.fromarray(noisy).save(paths[0])
    Image.fromarray(astronaut).save(paths[1])
    paths[2].write_text("not an image")
    res = subprocess.run(
        [sys.executable, "-m", "assessor", *map(str, paths), "--backend", "learned", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert res.returncode == 1, res.stderr  # one bad input, the others still assessed
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert [line["image"] for line in lines] == list(map(str, paths))
    first, second, third = lines
    assert {"score", "regions", "trace"} <= set(first) and first["backend"] == "learned"
    assert first["regions"][0]["distortion"] == "noise" and first["score"] < second["score"]
    assert "error" in third and "not an image" in res.stderr
    Diagnosis.from_dict({k: v for k, v in first.items() if k != "image"})
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "assessor",
            str(paths[1]),
            "--backend",
            "learned",
            "--model",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert missing.returncode == 2 and "train_embedded" in missing.stderr


def test_banding_counts_on_the_grey_level_reading(critic):
    # the network does not see the moon's posterized patch (it reads the whole soft photo as
    # "JPEG" texture); the classical judge counts its grey levels (flat plateaus where the rest of
    # the photo has grain), a measurement that counts alone
    box = (311, 266, 433, 381)
    img = degrade_region(benchdata.load_photo("moon"), "artifact", 5, box, np.random.default_rng(1)).image
    assert_counts_on_the_judges_reading(critic, img, "artifact", box, "does not see it", levels_alone=False)


def test_a_defect_read_twice_keeps_the_extent_of_both_readings(critic):
    # two classical leads confirm the coffee's noisy rectangle: one over all of it (sigma 3.7),
    # one over a strip where the grain measures strongest (sigma 6.9); the report used to keep
    # only the strip (IoU 0.26), which a fix then denoised alone
    box = (136, 261, 337, 375)
    img = degrade_region(benchdata.load_photo("coffee"), "noise", 3, box, np.random.default_rng(1)).image
    d = critic.assess(img)
    noise = [r for r in d.regions if r.distortion == "noise"]
    assert len(noise) == 1 and box_iou(noise[0].bbox, box) >= 0.6, d.regions
    assert noise[0].severity >= 0.75


def test_a_posterized_photo_is_graded_by_its_grey_levels(critic):
    # the network barely sees banding over the whole soft moon (it scored 4.25 at 5 levels per
    # channel, 4.62 at 40); the grey-level count grades it, and the score falls with every level
    moon = benchdata.load_photo("moon")
    scores = []
    for level in (1, 3, 5):
        d = critic.assess(apply_distortion(moon, "artifact", level))
        whole = [r for r in d.regions if r.distortion == "artifact" and r.is_global(d.image_size)]
        assert level == 1 or whole, d.regions
        scores.append(d.score)
    assert scores[0] > scores[1] > scores[2] and scores[2] < 3.5, scores
    old = load_assessor("learned", device="cpu", levels_alone=False).assess(
        apply_distortion(moon, "artifact", 5)
    )
    assert old.score > 4.0


def test_a_whole_image_blur_is_graded_by_its_edge_widths(critic):
    # the network's own whole-image blur grade levels off at 0.4-0.6 from level 2 or 3 on, so a
    # strong blur of the camera photo scored like a mild one elsewhere (3.32 at level 5); once the
    # network sees blur, the classical edge widths say how much
    img = apply_distortion(benchdata.load_photo("camera"), "blur", 5)
    d = critic.assess(img)
    grade = [s for s in d.trace if s.data and "cue_damage" in s.data][0].data
    assert (
        grade["damage"]["blur"] == pytest.approx(grade["cue_damage"]["blur"])
        and grade["damage"]["blur"] > 0.7
    )
    assert d.score < 2.6
    old = load_assessor("learned", device="cpu", measured=("noise", "jpeg", "artifact")).assess(img)
    assert old.score > 3.0


def test_whole_image_noise_is_confirmed_at_native_pixels(critic):
    # a reduced look understates grain on a textured photo (0.66 on the Grace Hopper photo at
    # noise level 3); the quietest tile at native pixels measures it as the classical critic does
    img = apply_distortion(benchdata.load_photo("hopper"), "noise", 3, np.random.default_rng(0))
    d = critic.assess(img)
    noise = [r for r in d.regions if r.distortion == "noise" and r.is_global(d.image_size)]
    classical = load_assessor("classical").assess(img).worst
    assert noise and classical.distortion == "noise"
    assert noise[0].severity == pytest.approx(classical.severity, abs=0.01) and noise[0].severity > 0.7
    assert any(s.thought.startswith("Suspect noise over the whole image") for s in d.trace)
    old = load_assessor("learned", device="cpu", confirm_global=()).assess(img)
    assert old.worst.distortion == "noise" and old.worst.severity < noise[0].severity - 0.05


def test_a_lead_the_network_barely_shows_is_not_seen(critic):
    # a magenta cast clips the red channel over the Grace Hopper photo's brightest patch; the
    # classical judge reads a blown-out patch there (0.57), the network shows overexposure at 0.07
    # inside against 0.05 around: more inside, but not seen at all
    img = apply_distortion(benchdata.load_photo("hopper"), "color_cast", 2, cast="magenta")
    d = critic.assess(img)
    assert not [r for r in d.regions if r.distortion == "overexposure"], d.regions
    rejected = [s for s in d.trace if "the network does not see it there" in s.observation]
    assert any(
        s.data["classical"][0] == "overexposure" and s.data["network_in_ring"][0] < 0.1 for s in rejected
    )
    old = load_assessor("learned", device="cpu", seen_floor=0.0).assess(img)
    assert [r for r in old.regions if r.distortion == "overexposure" and r.severity > 0.5], old.regions
    assert old.score < d.score - 0.2


def test_a_wide_blur_the_network_misses_natively_is_seen_reduced(critic):
    # a sigma-6 blurred ellipse on the moon: the classical edge widths single it out (5.4 px); the
    # network shows blur as much around it as inside at native pixels (0.09 against 0.08), clearly
    # more inside once the zoom is reduced until those edges are 2.5 px wide (0.36 against 0.10)
    box = (150, 0, 350, 200)
    img = degrade_region(benchdata.load_photo("moon"), "blur", 5, box, shape="ellipse", feather=4.0).image
    d = critic.assess(img)
    assert d.worst.distortion == "blur" and centre_inside(d.worst.bbox, box), d.regions
    step = confirmed_classical_lead(d)
    assert step.data["classical"][0] == "blur" and "px)" in step.observation
    p_in, p_ring = step.data["network_in_ring"]
    r_in, r_ring = step.data["reduced"]["network_in_ring"]
    assert p_in < 1.2 * p_ring and r_in > 2 * r_ring
    native = load_assessor("learned", device="cpu", wide_edges=0.0).assess(img)
    assert not [r for r in native.regions if r.distortion == "blur"], native.regions


@pytest.mark.parametrize(
    ("name", "kind", "box"),
    [("rocket", "overexposure", (330, 95, 541, 191)), ("hopper", "underexposure", (189, 17, 369, 229))],
)
def test_a_soft_round_patch_is_read_off_its_fitted_border(critic, name, kind, box):
    # a feathered ellipse brightened in a night sky / darkened over a face and a flag: no side to
    # snap to and no tile that stands out; the ellipse search finds its border at a coarse look,
    # the fit puts it on native pixels, one gain explains it all around, and the network zoomed on
    # it sees the change (the brightened sky: less dark than the sky around it)
    img = degrade_region(benchdata.load_photo(name), kind, 5, box, shape="ellipse", feather=4.0).image
    d = critic.assess(img)
    assert d.worst.distortion == kind and box_iou(d.worst.bbox, box) >= 0.6, d.regions
    assert "soft round border" in d.worst.reason
    step = next(
        s for s in d.trace if s.thought.startswith("Ellipse") and s.observation.startswith("Confirmed")
    )
    assert step.data["reading"][0] == kind and step.data["continuity"] >= 0.3
    without = load_assessor("learned", device="cpu", soft_patches=0).assess(img).worst
    assert without is None or without.distortion != kind or box_iou(without.bbox, box) < 0.3


def test_a_strongly_tinted_soft_patch_counts_on_its_border_reading(critic):
    # a magenta ellipse over the Grace Hopper photo's face and flag: the network never sees a tint
    # and the classical judge's tiles miss it; its border reads one strong set of channel gains
    # with the content running on across it, as a tinted rectangle's does
    box = (300, 29, 432, 259)
    rng = np.random.default_rng(0)
    img = degrade_region(
        benchdata.load_photo("hopper"), "color_cast", 4, box, rng, shape="ellipse", feather=4.0
    )
    d = critic.assess(img.image)
    assert d.worst.distortion == "color_cast" and box_iou(d.worst.bbox, box) >= 0.8, d.regions
    assert "strong tint" in d.worst.reason
    without = load_assessor("learned", device="cpu", soft_patches=0).assess(img.image).worst
    assert without is None or without.distortion != "color_cast"


@pytest.mark.parametrize(
    ("name", "box", "seed"), [("rocket", (274, 236, 490, 369), 0), ("chelsea", (20, 47, 200, 140), 1)]
)
def test_a_soft_patch_its_coarse_border_misses_is_fitted_on_a_reduced_look(critic, name, box, seed):
    # the coarse look puts a tinted ellipse's border a few native pixels off: the pairs read there
    # straddle its feather and no one tone map explains them. Fitted on a 384 px look first, its
    # border steps all around and reads one strong tint (without: only the whole image's cast)
    rng = np.random.default_rng(seed)
    img = degrade_region(
        benchdata.load_photo(name), "color_cast", 5, box, rng, shape="ellipse", feather=4.0
    ).image
    d = critic.assess(img)
    assert d.worst.distortion == "color_cast" and box_iou(d.worst.bbox, box) >= 0.8, d.regions
    assert "soft round border" in d.worst.reason
    coarse = load_assessor("learned", device="cpu", soft_fit_look=0).assess(img).worst
    assert coarse.distortion != "color_cast" or box_iou(coarse.bbox, box) < 0.3


def test_a_tint_that_darkens_its_patch_is_an_objects_colour(critic):
    # a tinted rectangle next to the coffee cup: the soft search also finds the brown drink in the
    # white cup, whose border reads as one strong tint all around; it also darkens the light to
    # 0.6, which no colour cast does (the vocabulary's strongest scale it by 0.82-1.24)
    box = (260, 40, 460, 220)
    img = degrade_region(benchdata.load_photo("coffee"), "color_cast", 4, box, np.random.default_rng(1)).image
    d = critic.assess(img)
    assert [(r.distortion, r.bbox) for r in d.regions] == [("color_cast", list(box))], d.regions
    lenient = load_assessor("learned", device="cpu", soft_tint_light=99.0).assess(img)
    drink = lenient.worst
    assert (
        drink.distortion == "color_cast" and box_iou(drink.bbox, box) < 0.1 and "soft round" in drink.reason
    )


def test_grain_the_judge_boxes_again_past_a_counted_box_widens_it(critic):
    # the README sample's noisy ellipse: a classical lead re-read as grain boxes its left part, more
    # severely than the classical noise lead boxing all of it; counted as one grain, the region
    # spans both (before, the whole patch was "already counted", and PiG left a noisy strip)
    sample = load_image(Path(__file__).parents[1] / "assessor" / "samples" / "sample.png").rgb
    d = critic.assess(sample)
    (noise,) = [r for r in d.regions if r.distortion == "noise"]
    assert noise.bbox == [256, 32, 448, 224] and noise.severity >= 0.9


def test_round_content_is_not_a_soft_patch(critic):
    # coins on a plain ground, a cup's crema, a cat's fur: round outlines step alike all around in
    # places, but no one tone map of the network-seen kind explains them; nor the camera's dark
    # body blurred with the cameraman's hands (it reads as darker by one gain all around, and looks
    # less bright than the sky around it, not darker)
    blurred = degrade_region(benchdata.load_photo("camera"), "blur", 5, (276, 39, 469, 238)).image
    images = [benchdata.load_photo(name) for name in ("coins", "coffee", "chelsea")] + [blurred]
    for img in images:
        d = critic.assess(img)
        assert not [r for r in d.regions if "soft round border" in r.reason], d.regions
    d = critic.assess(blurred)
    step = next(
        s for s in d.trace if s.thought.startswith("Ellipse") and s.data["reading"][0] == "underexposure"
    )
    assert step.observation.startswith("Rejected")


def test_a_blurred_patch_inside_the_frame_is_not_depth_of_field(critic, astronaut):
    # the astronaut's blurred chest joins a soft area at the frame's edge through the plain suit,
    # and the depth-of-field map took it in; a background runs out of the frame, this patch sits
    # well inside it
    from assessor.classical import ClassicalAssessor

    box = (289, 192, 432, 377)
    img = degrade_region(astronaut, "blur", 5, box, np.random.default_rng(0)).image
    d = critic.assess(img)
    assert d.worst.distortion == "blur" and box_iou(d.worst.bbox, box) >= 0.5, d.regions
    old = load_assessor("learned", device="cpu")
    old._classical = ClassicalAssessor(dof_frame=0.5)  # no box lies that far inside: all are near the frame
    worst = old.assess(img).worst
    assert worst is None or worst.distortion != "blur" or box_iou(worst.bbox, box) < 0.3


def test_grain_the_judge_boxes_inside_the_networks_area_takes_the_judges_box(critic):
    # the benchmark's rocket/local-noise/0: the network's area of grain runs 110 px on into the
    # smoke below the noisy rectangle; the classical judge boxes the grain where it measures, and a
    # denoiser measuring the network's box found its quiet half clean and did nothing
    from assessor.degrade import random_box

    img = benchdata.load_photo("rocket")
    rng = np.random.default_rng([0, 1003, 1, 0])
    box = random_box((img.shape[1], img.shape[0]), rng, (0.2, 0.4))
    damaged = degrade_region(img, "noise", int(rng.integers(3, 6)), box, rng).image
    d = critic.assess(damaged)
    assert d.worst.distortion == "noise" and box_iou(d.worst.bbox, box) >= 0.6, (d.regions, box)
    assert any("the network's area spread past it" in s.observation for s in d.trace)
    wide = load_assessor("learned", device="cpu", tighten=99.0).assess(damaged).worst
    assert wide.distortion == "noise" and box_iou(wide.bbox, box) < 0.5
