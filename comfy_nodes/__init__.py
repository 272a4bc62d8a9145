"""ComfyUI nodes: thin adapters over ``assessor`` and ``pig`` (classic node API, every ComfyUI
version). Importing this package loads no model: ``assessor``, ``pig``, diffusers and transformers
are imported when a node runs; ComfyUI's own modules only where ComfyUI provides them."""

from . import model_paths
from .nodes_assess import NODE_CLASS_MAPPINGS as _ASSESS_NODES
from .nodes_assess import NODE_DISPLAY_NAME_MAPPINGS as _ASSESS_NAMES
from .nodes_pig import NODE_CLASS_MAPPINGS as _PIG_NODES
from .nodes_pig import NODE_DISPLAY_NAME_MAPPINGS as _PIG_NAMES
from .nodes_report import NODE_CLASS_MAPPINGS as _REPORT_NODES
from .nodes_report import NODE_DISPLAY_NAME_MAPPINGS as _REPORT_NAMES

model_paths.register_model_folders()

NODE_CLASS_MAPPINGS: dict = {**_ASSESS_NODES, **_PIG_NODES, **_REPORT_NODES}
NODE_DISPLAY_NAME_MAPPINGS: dict = {**_ASSESS_NAMES, **_PIG_NAMES, **_REPORT_NAMES}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
