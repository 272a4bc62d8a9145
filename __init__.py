"""Q-DeepSight + PiG as a ComfyUI custom node pack.

ComfyUI imports this folder as a package under whatever name the folder has. The project's own
packages (``assessor``, ``pig``, ``comfy_nodes``) are plain top-level packages, so this folder is
put on ``sys.path`` (at the end, to shadow nobody) and we check that the names really resolve here.
Importing the pack loads no model and no heavy module.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.append(_HERE)

for _name in ("assessor", "pig", "comfy_nodes"):
    _mod = sys.modules.get(_name)
    if _mod is not None and not os.path.abspath(getattr(_mod, "__file__", "") or "").startswith(_HERE):
        raise ImportError(
            f"Q-DeepSight: another package named {_name!r} ({getattr(_mod, '__file__', '?')}) is already "
            "loaded; remove it or install this pack with pip (pip install -e <this folder>)."
        )

from comfy_nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

WEB_DIRECTORY = None
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
