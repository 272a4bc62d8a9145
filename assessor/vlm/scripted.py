"""Forcing a model to write a scripted text through the real ``generate`` path.

Tests and benchmarks need a model that behaves like a trained critic (a tool call, then an
answer) while it is a random-init network: this logits processor makes every step pick the next
token of a script, per row and per assistant turn, and leaves everything else (processor, cache,
stop strings, tool execution, parsing) real. Random weights, real code path, known output.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LogitsProcessor


class ScriptedLogitsProcessor(LogitsProcessor):
    """Row ``r`` writes ``scripts[r][k]`` as its ``k``-th assistant turn, then ends the turn.

    The turn and the step within it are read from the sequence itself (the number of
    ``<|im_start|>assistant\\n`` markers and the tokens after the last one), so the processor is
    stateless across ``generate`` calls and works whatever the batch layout or cache. A row with
    fewer scripts than turns repeats its last one. ``scripts`` may also be one list of turns used
    for every row.
    """

    def __init__(
        self,
        tokenizer,
        scripts: Sequence[Sequence[str]] | Sequence[str],
        *,
        marker: str = "<|im_start|>assistant\n",
        end_token: str = "<|im_end|>",
    ):
        if scripts and isinstance(scripts[0], str):
            scripts = [scripts]  # one script for every row
        self.scripts = [
            [tokenizer.encode(text, add_special_tokens=False) for text in turns] for turns in scripts
        ]
        if not self.scripts or not all(self.scripts):
            raise ValueError("every row needs at least one scripted turn")
        self.marker = torch.as_tensor(tokenizer.encode(marker, add_special_tokens=False), dtype=torch.long)
        self.end_id = int(tokenizer.convert_tokens_to_ids(end_token))
        self._where: dict[int, tuple[int, int, int]] = {}  # row -> (length, turn, turn start)

    def _locate(self, row: int, ids: torch.Tensor) -> tuple[int, int]:
        length = int(ids.shape[0])
        known = self._where.get(row)
        if known is not None and known[0] == length - 1:
            turn, start = known[1], known[2]
        else:
            m = self.marker.to(ids.device)
            if length < len(m):
                raise ValueError("no assistant turn in the sequence")
            hits = (ids.unfold(0, len(m), 1) == m).all(dim=1).nonzero().flatten()
            if hits.numel() == 0:
                raise ValueError("no assistant turn in the sequence")
            turn, start = int(hits.numel()) - 1, int(hits[-1]) + len(m)
        self._where[row] = (length, turn, start)
        return turn, length - start

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        forced = torch.empty(input_ids.shape[0], dtype=torch.long)
        for row in range(input_ids.shape[0]):
            turn, step = self._locate(row, input_ids[row])
            turns = self.scripts[min(row, len(self.scripts) - 1)]
            script = turns[min(turn, len(turns) - 1)]
            forced[row] = script[step] if step < len(script) else self.end_id
        forced = forced.to(scores.device)
        out = torch.full_like(scores, torch.finfo(scores.dtype).min)
        out.scatter_(1, forced[:, None], 0.0)
        return out


def critic_script(
    frame_size: tuple[int, int],
    *,
    crops: int = 2,
    score: float = 3.25,
    thought_words: int = 12,
) -> list[str]:
    """A plausible trajectory for a ``frame_size`` image: ``crops`` zooms, then a JSON answer with
    one region per zoom. Used by the GPU benchmark and the tests."""
    w, h = frame_size
    filler = " ".join(["the", "texture", "edges", "look", "soft", "here"] * (1 + thought_words // 6))
    filler = " ".join(filler.split()[:thought_words])
    boxes = []
    for k in range(crops):
        x0 = int(w * (0.1 + 0.4 * (k % 2)))
        y0 = int(h * (0.1 + 0.4 * ((k // 2) % 2)))
        boxes.append([x0, y0, x0 + max(1, w // 4), y0 + max(1, h // 4)])
    turns = []
    for k, box in enumerate(boxes):
        turns.append(
            f"<think>Region {k + 1}: {filler}.</think>\n<tool_call>\n"
            f'{{"name": "crop_zoom", "arguments": {{"bbox_2d": {box}, "label": "check {k + 1}"}}}}\n</tool_call>'
        )
    regions = ", ".join(
        f'{{"bbox_2d": {box}, "distortion": "blur", "severity": 0.5, "reason": "soft detail {k + 1}"}}'
        for k, box in enumerate(boxes)
    )
    turns.append(
        f'<think>Overall: {filler}.</think>\n<answer>\n{{"score": {score:.2f}, "regions": [{regions}]}}\n</answer>'
    )
    return turns
