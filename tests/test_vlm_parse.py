"""Reading model output: tool calls, answer formats of public IQA models, regions, repairs."""

from __future__ import annotations

import pytest

from assessor.vlm.parse import (
    box_to_source,
    loads_lenient,
    normalize_distortion,
    normalize_score,
    normalize_severity,
    parse_answer,
    parse_output,
    regions_to_source,
)
from assessor.vlm.prompts import PROMPT_STYLES, get_prompt_style
from assessor.zoom import ZoomError


def answer(text):
    out = parse_output(text)
    assert out.kind == "answer", out
    return out, parse_answer(out, text)


# ------------------------------------------------------------------ tool calls


def test_our_tool_call_with_reasoning():
    text = (
        "<think>The sky looks noisy.</think>\n<tool_call>\n"
        '{"name": "crop_zoom", "arguments": {"bbox_2d": [10, 20, 110, 220], "label": "sky"}}\n</tool_call>'
    )
    out = parse_output(text)
    assert out.kind == "tool_call"
    assert out.thought == "The sky looks noisy."
    assert out.tool_call.name == "crop_zoom"
    assert out.tool_call.arguments == {"bbox_2d": [10.0, 20.0, 110.0, 220.0], "label": "sky"}
    assert out.errors == [] and out.repairs == []


def test_deepeyes_tool_name_and_normalised_box_are_accepted():
    text = '<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [0.1, 0.2, 0.5, 0.6]}}</tool_call>'
    out = parse_output(text)
    assert out.kind == "tool_call"
    assert out.tool_call.name == "crop_zoom"
    assert out.tool_call.arguments["bbox_2d"] == [0.1, 0.2, 0.5, 0.6]
    assert any("image_zoom_in_tool" in r for r in out.repairs)


@pytest.mark.parametrize(
    "body, repair",
    [
        ("{'name': 'crop_zoom', 'arguments': {'bbox_2d': [1, 2, 30, 40]}}", "single quotes"),
        ('{"name": "crop_zoom", "arguments": {"bbox_2d": [1, 2, 30, 40],},}', "trailing commas"),
        ('{"name": "crop_zoom", "arguments": {"bbox_2d": [1, 2, 30, 40]', "closed unbalanced"),
        ('```json\n{"name": "crop_zoom", "arguments": {"bbox_2d": [1, 2, 30, 40]}}\n```', "code fence"),
        ('{"name": "crop_zoom", "arguments": "{\\"bbox\\": [1, 2, 30, 40]}"}', "'bbox' as bbox_2d"),
        ('{"name": "crop_zoom", "arguments": {"bbox_2d": [[1, 2], [30, 40]]}}', None),
        ('{"name": "crop_zoom", "arguments": {"bbox_2d": ["1", "2", "30", "40"]}}', None),
    ],
)
def test_malformed_tool_calls_are_repaired(body, repair):
    out = parse_output(f"<tool_call>{body}</tool_call>")
    assert out.kind == "tool_call", out.errors
    assert out.tool_call.arguments["bbox_2d"] == [1.0, 2.0, 30.0, 40.0]
    if repair:
        assert any(repair in r for r in out.repairs), out.repairs


def test_unterminated_tool_call_is_closed():
    out = parse_output('<tool_call>\n{"name": "crop_zoom", "arguments": {"bbox_2d": [1, 2, 30, 40]}}')
    assert out.kind == "tool_call"
    assert "closed an unterminated <tool_call>" in out.repairs


@pytest.mark.parametrize(
    "body, message",
    [
        ('{"name": "delete_files", "arguments": {}}', "unknown tool 'delete_files'"),
        ('{"name": "crop_zoom", "arguments": {"bbox_2d": [1, 2, 3]}}', "four numbers"),
        ('{"name": "crop_zoom", "arguments": {"label": "x"}}', "bbox_2d"),
        ("crop the top left please", "no JSON object found"),
        ('{"name": "crop_zoom", "arguments": {"bbox_2d": [1, 2, "nan", 4]}}', "four numbers"),
    ],
)
def test_unusable_tool_calls_are_errors_not_crashes(body, message):
    out = parse_output(f"<tool_call>{body}</tool_call>")
    assert out.kind == "none"
    assert out.tool_call is None
    assert any(message in e for e in out.errors), out.errors


def test_zoom_iqa_style_bare_object_is_a_tool_call():
    out = parse_output('I will look closer. {"bbox_2d": [0.2, 0.2, 0.6, 0.7], "tool": "crop"}')
    assert out.kind == "tool_call"
    assert out.tool_call.arguments["bbox_2d"] == [0.2, 0.2, 0.6, 0.7]


def test_first_of_tool_call_and_answer_wins():
    text = '<answer>{"score": 4}</answer><tool_call>{"name": "crop_zoom", "arguments": {"bbox_2d": [1,2,3,4]}}</tool_call>'
    assert parse_output(text).kind == "answer"


# ------------------------------------------------------------------ answers


def test_our_json_answer_with_regions_and_score_offset():
    text = (
        '<think>Blurry face.</think><answer>{"score": 2.75, "regions": [{"bbox_2d": [1, 2, 3, 4], '
        '"distortion": "blur", "severity": 0.8, "reason": "face"}]}</answer>'
    )
    out, ans = answer(text)
    assert out.thought == "Blurry face."
    assert ans.score == 2.75 and ans.format == "json"
    assert ans.raw_regions[0]["distortion"] == "blur"
    assert text[ans.score_offset] == "2"  # the first digit of the score, for rating probabilities


def test_qinsight_rating_format():
    text = '<think>Sharp, good exposure.</think> <answer>{"rating": 4.21}</answer>'
    _, ans = answer(text)
    assert ans.score == pytest.approx(4.21)
    assert ans.format == "rating" and ans.raw_regions == []
    assert text[ans.score_offset] == "4"


def test_visualquality_r1_number_format():
    text = "<think>Some noise in the shadows.</think>\n<answer>3.47</answer>"
    _, ans = answer(text)
    assert ans.score == pytest.approx(3.47) and ans.format == "number"
    assert text[ans.score_offset : ans.score_offset + 4] == "3.47"


@pytest.mark.parametrize(
    "text, score, fmt",
    [
        ("The final score is \\boxed{3.5}.", 3.5, "boxed"),
        ("Overall rating: 4", 4.0, "text"),
        ("<answer>Score: 8/10</answer>", 1 + 4 * 0.8, "text"),
        ("<answer>75 out of 100</answer>", 1 + 4 * 0.75, "text"),
        ('{"score": "3.0"} is my answer', 3.0, "json"),
        ("<answer>5.3</answer>", 5.0, "number"),
        ("<answer>0.6</answer>", 1.0, "number"),
    ],
)
def test_other_score_formats_and_scales(text, score, fmt):
    _, ans = answer(text)
    assert ans.score == pytest.approx(score)
    assert ans.format == fmt
    assert ans.errors == []


@pytest.mark.parametrize(
    "text, message",
    [
        ("<answer></answer>", "empty"),
        ("<answer>excellent quality</answer>", "no score"),
        ('<answer>{"regions": []}</answer>', "no score"),
        ("<answer>42</answer>", "outside 1-5"),
        ('<answer>{"score": "high"}</answer>', "not a number"),
        ("<answer>{score: 3,, regions</answer>", "not valid JSON"),
    ],
)
def test_answers_without_a_usable_score_are_errors(text, message):
    _, ans = answer(text)
    assert ans.score is None
    assert any(message in e for e in ans.errors), ans.errors


def test_nothing_usable():
    out = parse_output("I think the image is nice.")
    assert out.kind == "none"
    assert out.errors == ["found neither a <tool_call> nor an <answer>"]


# ------------------------------------------------------------------ regions


def test_box_mapping_from_the_frame_the_model_saw():
    # the model saw a 560x280 frame of a 1000x500 image
    assert box_to_source([56, 28, 112, 56], (1000, 500), (560, 280)) == [100, 50, 200, 100]
    # fractions are auto-detected, thousandths on request
    assert box_to_source([0.1, 0.1, 0.2, 0.2], (1000, 500), (560, 280)) == [100, 50, 200, 100]
    assert box_to_source([100, 100, 200, 200], (1000, 500), None, "thousandths") == [100, 50, 200, 100]
    # partly outside: clipped; wholly outside: an error
    assert box_to_source([500, 200, 700, 400], (1000, 500), (560, 280)) == [892, 357, 1000, 500]
    with pytest.raises(ZoomError, match="no area inside the 1000x500 image"):
        box_to_source([600, 300, 700, 400], (1000, 500), (560, 280))


def test_regions_are_repaired_or_dropped_with_reasons():
    raw = [
        {"bbox_2d": [0, 0, 56, 28], "distortion": "Motion-Blur", "severity": "severe", "reason": "car"},
        {"bbox_2d": [0.5, 0.5, 1.0, 1.0], "distortion": "jpeg", "severity": 7},
        {"bbox_2d": [900, 900, 950, 950], "distortion": "noise", "severity": 0.2},
        {"distortion": "color cast", "severity": 0.3},
        {"bbox_2d": [1, 2, 3], "distortion": "noise", "severity": 0.2},
        {"bbox_2d": [10, 10, 40, 40], "distortion": "lens flare", "severity": 0.4},
        "not a region",
    ]
    regions, errors, repairs = regions_to_source(raw, (1000, 500), (560, 280))
    assert [r.distortion for r in regions] == ["blur", "jpeg", "color_cast", "other"]
    assert regions[0].bbox == [0, 0, 100, 50] and regions[0].severity == 0.9 and regions[0].reason == "car"
    assert regions[1].bbox == [500, 250, 1000, 500] and regions[1].severity == pytest.approx(0.7)
    assert regions[2].bbox == [0, 0, 1000, 500]  # no box: the whole image
    assert len(errors) == 3
    assert any("regions[2]" in e and "no area inside" in e for e in errors)
    assert any("regions[4]" in e and "four numbers" in e for e in errors)
    assert any("regions[6]" in e for e in errors)
    assert any("'Motion-Blur' as 'blur'" in r for r in repairs)
    assert any("unknown distortion 'lens flare'" in r for r in repairs)


@pytest.mark.parametrize(
    "label, name",
    [("blur", "blur"), ("out of focus", "blur"), ("Grainy", "noise"), ("compression artifacts", "jpeg"),
     ("blown highlights", "overexposure"), ("too dark", "underexposure"), ("hazy", "low_contrast"),
     ("white balance", "color_cast"), ("extra fingers", "artifact"), ("", "other"), (None, "other")],
)  # fmt: skip
def test_distortion_names(label, name):
    assert normalize_distortion(label)[0] == name


def test_severity_and_score_normalisation():
    assert normalize_severity(0.4) == (0.4, None)
    assert normalize_severity(40)[0] == pytest.approx(0.4)
    assert normalize_severity("moderate")[0] == 0.6
    assert normalize_severity(None)[0] == 0.5
    assert normalize_score(3.2) == (3.2, None, None)
    assert normalize_score(9, "/10")[0] == pytest.approx(4.6)
    assert normalize_score(-2)[2] == "score -2 is outside 1-5"


def test_loads_lenient_never_guesses():
    assert loads_lenient('{"a": 1}') == ({"a": 1}, [])
    assert loads_lenient("{'a': True, 'b': None,}")[0] == {"a": True, "b": None}
    with pytest.raises(ValueError):
        loads_lenient("no json here")


def test_prompt_styles_exist_and_format():
    assert set(PROMPT_STYLES) == {"qdeepsight", "qinsight", "visualquality-r1", "plain"}
    assert "1024x768" in get_prompt_style("qdeepsight").user_text((1024, 768))
    assert "crop_zoom" in PROMPT_STYLES["qdeepsight"].system
    assert '{"rating": your score}' in PROMPT_STYLES["qinsight"].user_text((64, 64))
    with pytest.raises(ValueError, match="unknown prompt style"):
        get_prompt_style("nope")


@pytest.mark.parametrize("name", sorted(PROMPT_STYLES))
def test_every_prompt_style_formats(name):
    style = get_prompt_style(name)
    text = style.user_text((640, 480))
    assert "{" not in text.replace('{"rating"', "") and text.strip()
    assert "<answer>" in style.answer_example
