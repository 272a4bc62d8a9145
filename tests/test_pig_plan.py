"""Plans from diagnoses: masks, operations, bounded strengths, prompt edits, user masks."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from assessor.schema import Diagnosis, Region
from pig.plan import DEFAULT_STRENGTHS, PROMPT_EDITS, make_plan, merge_prompts, soft_mask

W, H = 200, 120


def diagnosis():
    return Diagnosis(
        score=2.5,
        regions=[
            Region([20, 30, 60, 70], "noise", 0.8, "grain"),
            Region([0, 0, W, H], "color_cast", 0.4, "whole image is warm"),
            Region([120, 10, 180, 50], "blur", 0.1, "too mild to fix"),
            Region([130, 60, 190, 110], "jpeg", 0.5, "blocks"),
        ],
        image_size=(W, H),
    )


def test_regions_masks_operations_and_order():
    plan = make_plan(diagnosis(), prompt="a red car", negative_prompt="people")
    assert plan.image_size == (W, H)
    kinds = [rp.region.distortion for rp in plan.regions]
    assert kinds == ["noise", "jpeg", "color_cast"]  # by severity; the 0.1 blur is below min_severity
    noise, jpeg, cast = plan.regions
    assert noise.operation == "inpaint" and jpeg.operation == "inpaint" and cast.operation == "global_fix"
    assert noise.index == 0 and cast.index == 1 and jpeg.index == 3
    for rp in plan.regions:
        assert rp.mask.shape == (H, W) and rp.mask.dtype == np.float32
        assert 0.0 <= rp.mask.min() and rp.mask.max() <= 1.0
    x0, y0, x1, y1 = noise.region.bbox
    assert np.all(noise.mask[y0:y1, x0:x1] == 1.0)  # the whole box changes
    assert noise.mask[0, W - 1] == 0.0 and noise.mask[H - 1, W - 1] == 0.0  # far away: exactly 0
    assert 0 < noise.mask[y0 - 10, (x0 + x1) // 2] < 1 or noise.mask[y0 - 10, (x0 + x1) // 2] == 1.0
    assert np.all(cast.mask == 1.0)
    union = plan.mask()
    assert np.array_equal(union, np.maximum(np.maximum(noise.mask, jpeg.mask), cast.mask))


def test_prompts_merge_user_text_with_distortion_edits():
    plan = make_plan(diagnosis(), prompt="a red car, sharp focus", negative_prompt="people, blurry")
    noise = plan.regions[0]
    assert noise.positive.startswith("a red car, sharp focus")
    assert PROMPT_EDITS["noise"][0] in noise.positive
    assert noise.negative.startswith("people, blurry") and "grain" in noise.negative
    assert merge_prompts("a, b", "B, c", "", " a ") == "a, b, c"


def test_region_prompts_replace_the_prompt_for_that_region_only():
    plan = make_plan(diagnosis(), prompt="a red car", region_prompts={3: "a licence plate"})
    by_index = {rp.index: rp for rp in plan.regions}
    assert by_index[3].positive.startswith("a licence plate") and "red car" not in by_index[3].positive
    assert by_index[0].positive.startswith("a red car")


@settings(max_examples=60, deadline=None)
@given(st.floats(0, 1), st.sampled_from(["inpaint", "img2img", "global_fix"]))
def test_strength_follows_severity_within_bounds(severity, op):
    d = Diagnosis(
        3.0,
        [Region([0, 0, W, H] if op != "inpaint" else [10, 10, 50, 50], "blur", severity)],
        image_size=(W, H),
    )
    global_op = op if op != "inpaint" else "global_fix"
    plan = make_plan(d, min_severity=0.0, global_operation=global_op)
    lo, hi = DEFAULT_STRENGTHS[plan.regions[0].operation]
    assert lo - 1e-9 <= plan.regions[0].strength <= hi + 1e-9
    mild = make_plan(
        Diagnosis(3.0, [Region(d.regions[0].bbox, "blur", 0.0)], image_size=(W, H)),
        min_severity=0.0,
        global_operation=global_op,
    )
    assert mild.regions[0].strength <= plan.regions[0].strength + 1e-9


def test_global_operation_follows_the_refiner():
    plan = make_plan(
        diagnosis(), global_operation="img2img", strengths={"img2img": (0.1, 0.2), "inpaint": (0.4, 0.5)}
    )
    cast = [rp for rp in plan.regions if rp.region.distortion == "color_cast"][0]
    assert cast.operation == "img2img" and 0.1 <= cast.strength <= 0.2
    assert all(0.4 <= rp.strength <= 0.5 for rp in plan.regions if rp.operation == "inpaint")
    with pytest.raises(ValueError):
        make_plan(diagnosis(), global_operation="inpaint")


def test_user_mask_narrow_keeps_only_what_overlaps():
    user = np.zeros((H, W), np.uint8)
    user[20:80, 0:80] = 255  # covers the noise region, not the jpeg one
    plan = make_plan(diagnosis(), user_mask=user, user_mask_mode="narrow")
    kinds = {rp.region.distortion: rp for rp in plan.regions}
    assert set(kinds) == {"noise", "color_cast"}
    for rp in plan.regions:
        assert np.all(rp.mask[user == 0] == 0)
    # the whole-image cast is now confined to the user's area: a local job
    assert kinds["color_cast"].operation == "inpaint"


def test_user_mask_replace_is_the_only_region():
    user = np.zeros((H, W), bool)
    user[60:100, 140:180] = True  # over the jpeg region
    plan = make_plan(diagnosis(), user_mask=user, user_mask_mode="replace", prompt="chrome")
    assert len(plan.regions) == 1
    rp = plan.regions[0]
    assert rp.region.bbox == [140, 60, 180, 100] and rp.region.distortion == "jpeg" and rp.index == -1
    assert np.array_equal(rp.mask, user.astype(np.float32)) and rp.operation == "inpaint"
    assert rp.positive.startswith("chrome")
    empty = make_plan(diagnosis(), user_mask=np.zeros((H, W)), user_mask_mode="replace")
    assert empty.regions == []
    with pytest.raises(ValueError, match="100x50"):
        make_plan(diagnosis(), user_mask=np.ones((50, 100)))


def test_to_dict_is_json_without_arrays():
    d = make_plan(diagnosis(), prompt="x").to_dict()
    text = json.dumps(d)
    assert "mask_area" in text and d["image_size"] == [W, H]
    assert {"bbox", "operation", "strength", "positive", "negative", "distortion"} <= set(d["regions"][0])


def test_soft_mask_shapes():
    rect = soft_mask((100, 80), (20, 20, 60, 50), dilation=4, feather=6)
    ell = soft_mask((100, 80), (20, 20, 60, 50), shape="ellipse", dilation=4, feather=6)
    assert rect[20:50, 20:60].min() == 1.0
    assert ell[35, 40] == 1.0 and ell[0, 0] == 0.0 and rect[0, 0] == 0.0
    hard = soft_mask((100, 80), (20, 20, 60, 50), dilation=0, feather=0)
    assert hard.sum() == 40 * 30 and set(np.unique(hard)) == {0.0, 1.0}
    with pytest.raises(ValueError):
        soft_mask((10, 10), (1, 1, 5, 5), shape="star")
