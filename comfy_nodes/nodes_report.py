"""Saving diagnoses and refine reports next to the images, so headless (API) runs keep them."""

from __future__ import annotations

import json
import os

from .nodes_assess import CATEGORY


def save_text(text: str, output_dir: str, filename_prefix: str, *, counter_path=None) -> str:
    """Write ``text`` as ``PREFIX_00001_.json`` (pretty JSON when it parses) or ``.txt``, never
    overwriting; returns the path. ``counter_path`` is ComfyUI's ``get_save_image_path`` when given."""
    try:
        body, ext = json.dumps(json.loads(text), indent=2), "json"
    except (TypeError, ValueError):
        body, ext = str(text), "txt"
    if counter_path is not None:
        folder, name, counter, _, _ = counter_path(filename_prefix, output_dir)
    else:
        folder = os.path.join(output_dir, os.path.dirname(os.path.normpath(filename_prefix)))
        name, counter = os.path.basename(os.path.normpath(filename_prefix)), 1
    os.makedirs(folder, exist_ok=True)
    while True:
        path = os.path.join(folder, f"{name}_{counter:05}_.{ext}")
        try:
            with open(path, "x", encoding="utf-8") as f:  # "x": never overwrite
                f.write(body + "\n")
            return path
        except FileExistsError:
            counter += 1


class SaveQDeepSightText:
    """Writes a diagnosis or report (any text) into ComfyUI's output folder."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "text": (
                    "STRING",
                    {
                        "default": "",
                        "multiline": True,
                        "tooltip": "The text to save: connect a diagnosis, plan, score history or report output.",
                    },
                ),
                "filename_prefix": (
                    "STRING",
                    {
                        "default": "qdeepsight/report",
                        "tooltip": "File name prefix inside the output folder; a counter and .json (or .txt) are added.",
                    },
                ),
            }
        }

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"
    CATEGORY = CATEGORY
    DESCRIPTION = "Saves a diagnosis or refine report as JSON in the output folder."

    def save(self, text, filename_prefix):
        import folder_paths  # ComfyUI

        output_dir = folder_paths.get_output_directory()
        path = save_text(text, output_dir, filename_prefix, counter_path=folder_paths.get_save_image_path)
        return {"ui": {"text": [os.path.relpath(path, output_dir)]}}


NODE_CLASS_MAPPINGS = {"QDeepSightSaveText": SaveQDeepSightText}
NODE_DISPLAY_NAME_MAPPINGS = {"QDeepSightSaveText": "Save Text (Q-DeepSight)"}
