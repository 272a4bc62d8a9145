"""Where the pack's models live in a ComfyUI install, listed through ComfyUI's ``folder_paths``.

VLM critics are folders (``config.json`` + safetensors) under ``models/qdeepsight`` (registered here
when absent); folders under ``models/LLM`` and ``models/VLM``, which other VLM packs use, are listed
too. Outside ComfyUI (plain Python, tests) ``folder_paths`` is missing and every list is empty.
"""

from __future__ import annotations

import os

MODEL_FOLDER = "qdeepsight"
SHARED_VLM_FOLDERS = ("LLM", "VLM")
NO_MODEL = "(none: use model_path_or_id)"


def _folder_paths():
    try:
        import folder_paths  # ComfyUI's module; present only inside ComfyUI
    except ImportError:
        return None
    return folder_paths


def register_model_folders() -> None:
    """Add ``models/qdeepsight`` (and the shared VLM folders) to ComfyUI's model folders if absent."""
    fp = _folder_paths()
    if fp is None:
        return
    base = getattr(fp, "models_dir", None)
    if base is None:
        return
    for name in (MODEL_FOLDER, *SHARED_VLM_FOLDERS):
        if name not in fp.folder_names_and_paths:
            fp.add_model_folder_path(name, os.path.join(base, name))


def _roots(names: tuple[str, ...]) -> list[str]:
    fp = _folder_paths()
    if fp is None:
        return []
    roots: list[str] = []
    for name in names:
        if name in fp.folder_names_and_paths:
            roots += [p for p in fp.get_folder_paths(name) if os.path.isdir(p)]
    return roots


# (roots, max_depth) -> (folders found, mtime of every folder walked): ComfyUI asks for the lists on
# every INPUT_TYPES call (each page load); a stat per folder is much cheaper than a new walk.
_FOLDER_CACHE: dict[tuple[tuple[str, ...], int], tuple[list[str], dict[str, float]]] = {}


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def model_folders(roots: list[str], *, max_depth: int = 3) -> list[str]:
    """Sub-folders (relative, '/'-separated) of ``roots`` that hold a ``config.json``: loadable models.

    Memoised like ComfyUI's ``folder_paths``: the walk is redone only when a walked folder changed
    (a model added, removed or renamed changes its parent's mtime)."""
    roots = [os.path.abspath(r) for r in roots]
    key = (tuple(roots), max_depth)
    cached = _FOLDER_CACHE.get(key)
    if cached is not None and all(_mtime(d) == t for d, t in cached[1].items()):
        return list(cached[0])
    found: set[str] = set()
    walked: dict[str, float] = {}
    for root in roots:
        walked[root] = _mtime(root)
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            walked[dirpath] = _mtime(dirpath)
            rel = os.path.relpath(dirpath, root)
            depth = 0 if rel == "." else rel.count(os.sep) + 1
            if depth >= max_depth:
                dirnames[:] = []
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            if "config.json" in filenames and rel != ".":
                found.add(rel.replace(os.sep, "/"))
    result = sorted(found)
    _FOLDER_CACHE[key] = (result, walked)
    return list(result)


def vlm_model_choices() -> list[str]:
    return [NO_MODEL, *model_folders(_roots((MODEL_FOLDER, *SHARED_VLM_FOLDERS)))]


def resolve_vlm_model(choice: str, path_or_id: str) -> str | None:
    """The free-text path or hub id wins; else the chosen folder's absolute path; else None."""
    text = (path_or_id or "").strip()
    if text:
        return text
    if not choice or choice == NO_MODEL:
        return None
    for root in _roots((MODEL_FOLDER, *SHARED_VLM_FOLDERS)):
        candidate = os.path.join(root, *choice.split("/"))
        if os.path.isfile(os.path.join(candidate, "config.json")):
            return candidate
    raise FileNotFoundError(f"model folder {choice!r} is no longer in the models folders; refresh the page")


def sdxl_choices() -> list[str]:
    """Single-file checkpoints (``models/checkpoints``) and diffusers folders (``models/diffusers``)."""
    fp = _folder_paths()
    if fp is None:
        return [NO_MODEL]
    files = list(fp.get_filename_list("checkpoints")) if "checkpoints" in fp.folder_names_and_paths else []
    folders = [f"diffusers/{d}" for d in model_folders(_roots(("diffusers",)), max_depth=2)]
    return [NO_MODEL, *files, *folders]


def resolve_sdxl(choice: str, path_or_id: str) -> str | None:
    text = (path_or_id or "").strip()
    if text:
        return text
    if not choice or choice == NO_MODEL:
        return None
    fp = _folder_paths()
    if fp is None:
        raise FileNotFoundError(f"{choice!r}: ComfyUI's folder_paths is not available")
    if choice.startswith("diffusers/"):
        rel = choice[len("diffusers/") :]
        for root in _roots(("diffusers",)):
            candidate = os.path.join(root, *rel.split("/"))
            if os.path.isdir(candidate):
                return candidate
    else:
        path = fp.get_full_path("checkpoints", choice)
        if path:
            return path
    raise FileNotFoundError(f"{choice!r} is no longer in the models folders; refresh the page")
