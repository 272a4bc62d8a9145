import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from assessor.schema import DISTORTIONS, Diagnosis, Region, SchemaError, ToolCall, TraceStep


def make_diagnosis() -> Diagnosis:
    return Diagnosis(
        score=3.25,
        regions=[
            Region([10, 20, 110, 90], "noise", 0.7, "grain of sigma 12"),
            Region([0, 0, 200, 100], "color_cast", 0.3, "whole image: warm"),
        ],
        trace=[
            TraceStep(thought="look at the whole image", observation="mean 45%", view=[0, 0, 200, 100]),
            TraceStep(
                thought="zoom in",
                tool_call=ToolCall("crop_zoom", {"bbox_2d": [10, 20, 110, 90], "context": 0.5}),
                observation="confirmed noise",
                view=[0, 0, 160, 100],
                data={"in_noise_sigma": 12.0},
            ),
        ],
        backend="classical",
        image_size=(200, 100),
        timings={"total_s": 0.12},
    )


def test_json_round_trip_is_exact():
    d = make_diagnosis()
    text = d.to_json()
    back = Diagnosis.from_json(text)
    assert back == d
    assert back.to_json() == text
    assert json.loads(text)["regions"][0]["bbox"] == [10, 20, 110, 90]
    assert back.trace[1].tool_call == ToolCall("crop_zoom", {"bbox_2d": [10, 20, 110, 90], "context": 0.5})


def test_worst_and_global():
    d = make_diagnosis()
    assert d.worst.distortion == "noise"
    assert d.regions[1].is_global((200, 100))
    assert not d.regions[0].is_global((200, 100))
    assert Diagnosis(score=5.0).worst is None


@pytest.mark.parametrize(
    "change, message",
    [
        ({"score": 0.5}, "score: 0.5 is not in [1, 5]"),
        ({"score": float("nan")}, "score: expected a finite number"),
        ({"score": "4"}, "score: expected a number"),
    ],
)
def test_bad_scores(change, message):
    data = make_diagnosis().to_dict()
    data.update(change)
    with pytest.raises(SchemaError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Diagnosis.from_dict(data)


@pytest.mark.parametrize(
    "region, message",
    [
        (
            {"bbox": [10, 10, 5, 20], "distortion": "blur", "severity": 0.5},
            r"regions\[0\].bbox: need 0 <= x0 < x1",
        ),
        (
            {"bbox": [10, 10, 20], "distortion": "blur", "severity": 0.5},
            r"regions\[0\].bbox: expected \[x0, y0, x1, y1\]",
        ),
        (
            {"bbox": [0, 0, 10, 10], "distortion": "fuzzy", "severity": 0.5},
            r"regions\[0\].distortion: 'fuzzy' is not one of",
        ),
        (
            {"bbox": [0, 0, 10, 10], "distortion": "blur", "severity": 1.5},
            r"regions\[0\].severity: 1.5 is not in \[0, 1\]",
        ),
        ({"bbox": [0, 0, 10, 10], "distortion": "blur"}, r"regions\[0\]: missing field\(s\) severity"),
        ({"bbox": [0, 0, 10.5, 10], "distortion": "blur", "severity": 0.1}, "integer pixel coordinates"),
        (
            {"bbox": [0, 0, 300, 10], "distortion": "blur", "severity": 0.1},
            "reaches outside the 200x100 image",
        ),
    ],
)
def test_bad_regions_name_the_field(region, message):
    data = make_diagnosis().to_dict()
    data["regions"] = [region]
    with pytest.raises(SchemaError, match=message):
        Diagnosis.from_dict(data)


def test_bad_json_is_a_schema_error():
    with pytest.raises(SchemaError, match="not valid JSON"):
        Diagnosis.from_json("{not json")
    with pytest.raises(SchemaError, match="expected an object"):
        Diagnosis.from_json("[1, 2]")


def test_vocabulary():
    assert DISTORTIONS == (
        "blur", "noise", "jpeg", "overexposure", "underexposure", "low_contrast", "color_cast", "artifact", "other",
    )  # fmt: skip


boxes = st.tuples(st.integers(0, 500), st.integers(0, 500), st.integers(1, 300), st.integers(1, 300)).map(
    lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]]
)


@given(
    score=st.floats(1.0, 5.0),
    regions=st.lists(
        st.tuples(boxes, st.sampled_from(DISTORTIONS), st.floats(0.0, 1.0), st.text(max_size=20)), max_size=5
    ),
)
def test_round_trip_property(score, regions):
    d = Diagnosis(score=score, regions=[Region(b, k, s, r) for b, k, s, r in regions], backend="x")
    assert Diagnosis.from_json(d.to_json()) == d
