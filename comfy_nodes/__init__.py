"""ComfyUI nodes: thin adapters over ``assessor`` and ``pig``. Nothing here imports ComfyUI at
import time; ComfyUI modules are imported inside the functions that run in ComfyUI."""

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
