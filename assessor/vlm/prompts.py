"""What the critic is told: the system prompt with the crop_zoom tool, the answer formats, and the
messages the loop sends back (tool responses, corrections, the call for a final answer).

Several prompt styles exist so that public IQA fine-tunes can be used as they were trained:
``qdeepsight`` (ours: tool + localized JSON answer), ``qinsight`` (Q-Insight's ``{"rating": x}``),
``visualquality-r1`` (a bare number in ``<answer>``) and ``plain`` (a score, no reasoning asked).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..schema import DISTORTIONS

TOOL_NAME = "crop_zoom"
STOP_STRINGS: tuple[str, ...] = ("</tool_call>", "</answer>")

CROP_ZOOM_TOOL = {
    "type": "function",
    "function": {
        "name": TOOL_NAME,
        "description": "Crop a region of the image (with a little context around it) and show it enlarged.",
        "parameters": {
            "type": "object",
            "properties": {
                "bbox_2d": {
                    "type": "array",
                    "items": {"type": "number"},
                    "minItems": 4,
                    "maxItems": 4,
                    "description": "[x0, y0, x1, y1] in pixels of the full image as you see it",
                },
                "label": {"type": "string", "description": "what you want to check there"},
            },
            "required": ["bbox_2d"],
        },
    },
}

QDEEPSIGHT_SYSTEM = f"""You are a careful image-quality critic. Judge technical quality: sharpness, noise, compression artifacts, exposure, contrast, colour, and generation artifacts (malformed hands, faces, text or objects, smeared textures, seams). Do not judge content or taste. Intentional shallow depth of field (a soft background behind a sharp subject) is not a defect.

Look at the whole image first. When a region looks suspicious, zoom in on it with the {TOOL_NAME} tool, look again, and only then decide.

# Tools

<tools>
{json.dumps(CROP_ZOOM_TOOL)}
</tools>

To zoom, write your reasoning, then exactly one tool call, and stop:
<tool_call>
{{"name": "{TOOL_NAME}", "arguments": {{"bbox_2d": [x0, y0, x1, y1], "label": "what to check"}}}}
</tool_call>
The zoomed crop comes back in the next message.

When you are sure, write your reasoning, then the final answer, and stop:
<answer>
{{"score": 3.25, "regions": [{{"bbox_2d": [x0, y0, x1, y1], "distortion": "blur", "severity": 0.6, "reason": "the face is out of focus"}}]}}
</answer>
score: overall quality from 1.00 (very poor) to 5.00 (excellent), two decimals.
distortion: one of {", ".join(DISTORTIONS)}.
severity: 0.0 (barely visible) to 1.0 (ruins the image).
All boxes, in tool calls and in the answer, are [x0, y0, x1, y1] in pixels of the full image as you first saw it, never of a zoomed crop. Use "regions": [] when nothing is wrong."""

QDEEPSIGHT_USER = "Assess the quality of this image ({width}x{height} pixels)."

RATING_QUESTION = (
    "What is your overall rating on the quality of this picture? The rating should be a float between 1 "
    "and 5, rounded to two decimal places, with 1 representing very poor quality and 5 representing "
    "excellent quality."
)
QINSIGHT_USER = (
    RATING_QUESTION + " First output the thinking process in <think> </think> tags and then output the final "
    'answer in <answer> </answer> tags as JSON: {{"rating": your score}}.'
)
VISUALQUALITY_R1_USER = (
    "You are doing the image quality assessment task. Here is the question: "
    + RATING_QUESTION
    + " First output the thinking process in <think> </think> tags and then output the final answer with only "
    "one score in <answer> </answer> tags."
)
PLAIN_USER = (
    "Rate the quality of this image from 1 (very poor) to 5 (excellent). Answer with the score only, in "
    "<answer> </answer> tags."
)


@dataclass(frozen=True)
class PromptStyle:
    """How the first turn is worded and what answer the model was trained to give."""

    name: str
    system: str | None  # None: the chat template's default system message
    user: str  # may use {width} and {height}: the size of the image as the model sees it
    answer_example: str  # repeated in corrections, in the format the model knows
    # EGF appends this to a trajectory to read the model's belief: the answer's opening up to the score
    probe_prefix: str
    # the ParsedAnswer formats (see assessor.vlm.parse) this style asks for: PCR pays only these in full
    answer_formats: tuple[str, ...]

    def user_text(self, frame_size: tuple[int, int]) -> str:
        return self.user.format(width=frame_size[0], height=frame_size[1])


PROMPT_STYLES: dict[str, PromptStyle] = {
    "qdeepsight": PromptStyle(
        "qdeepsight",
        QDEEPSIGHT_SYSTEM,
        QDEEPSIGHT_USER,
        '<answer>\n{"score": 3.25, "regions": []}\n</answer>',
        probe_prefix='<answer>\n{"score": ',
        answer_formats=("json",),
    ),
    "qinsight": PromptStyle(
        "qinsight",
        None,
        QINSIGHT_USER,
        '<answer>{"rating": 3.25}</answer>',
        probe_prefix='<answer>{"rating": ',
        answer_formats=("rating",),
    ),
    "visualquality-r1": PromptStyle(
        "visualquality-r1",
        None,
        VISUALQUALITY_R1_USER,
        "<answer>3.25</answer>",
        probe_prefix="<answer>",
        answer_formats=("number",),
    ),
    "plain": PromptStyle(
        "plain",
        None,
        PLAIN_USER,
        "<answer>3.25</answer>",
        probe_prefix="<answer>",
        answer_formats=("number",),
    ),
}


def get_prompt_style(name: str) -> PromptStyle:
    try:
        return PROMPT_STYLES[name]
    except KeyError:
        raise ValueError(f"unknown prompt style {name!r}; choose one of {', '.join(PROMPT_STYLES)}") from None


def format_box(box) -> str:
    return "[" + ", ".join(str(int(round(v))) for v in box) + "]"


def tool_response_texts(frame_box, zoom_size: tuple[int, int], zooms_left: int) -> tuple[str, str]:
    """Text before and after the zoomed image in the tool-response turn (DeepEyes' layout)."""
    before = (
        f"<tool_response>\nZoom on {format_box(frame_box)} (pixels of the full image, context included), "
        f"shown at {zoom_size[0]}x{zoom_size[1]}:\n"
    )
    if zooms_left > 0:
        after = f"\n</tool_response>\nYou may zoom {zooms_left} more time{'s' if zooms_left != 1 else ''}."
    else:
        after = "\n</tool_response>\nThat was your last zoom."
    return before, after


def final_answer_now(style: PromptStyle) -> str:
    return f"This is your last turn: give the final answer now, in the format {style.answer_example}"


def correction(reason: str, style: PromptStyle) -> str:
    """What the loop says back when an output could not be used, so the model can fix it."""
    return (
        f"{reason} Reply with one {TOOL_NAME} tool call or with the final answer, e.g. {style.answer_example}"
    )
