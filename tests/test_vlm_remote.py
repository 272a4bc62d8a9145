"""The openai backend against a small OpenAI-compatible server started here that serves the tiny
Qwen2.5-VL (forced to a script), like vLLM would serve the real one: images as data URLs, stop
strings dropped from the reply, concurrency, timeouts and retries."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_qwen import scripted, tiny_qwen_parts

from assessor.vlm.remote import (
    OpenAIAssessor,
    OpenAIClient,
    ServerError,
    normalize_base_url,
    rating_probs_from_logprobs,
    restore_stop_string,
)

REPO = Path(__file__).resolve().parents[1]
# Boxes in fractions of the image (auto-detected): the script fits any image size.
SCRIPT = [
    '<think>The left side looks soft.</think>\n<tool_call>\n{"name": "image_zoom_in_tool", '
    '"arguments": {"bbox_2d": [0.0, 0.25, 0.5, 0.75]}}\n</tool_call>',
    '<think>Confirmed.</think>\n<answer>\n{"score": 2.5, "regions": [{"bbox_2d": [0.0, 0.5, 0.25, 1.0], '
    '"distortion": "blur", "severity": 0.75, "reason": "soft edge"}]}\n</answer>',
]


class TinyServer:
    """/v1/models and /v1/chat/completions over the tiny model; knobs to misbehave on purpose."""

    def __init__(self, script=SCRIPT):
        self.tokenizer, self.processor, self.model = tiny_qwen_parts(seed=0)
        self.script = script
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.fail_next = 0  # answer this many requests with HTTP 503
        self.slow_marker: str | None = None  # requests whose text contains it sleep past the timeout
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, payload):
                body = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": "tiny-qwen", "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": "not found"}})
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body)
                    if server.fail_next > 0:
                        server.fail_next -= 1
                        return self._send(503, {"error": {"message": "overloaded"}})
                if server.slow_marker and server.slow_marker in json.dumps(body["messages"][-1]):
                    time.sleep(2.0)
                    return self._send(500, {"error": {"message": "too late"}})
                try:
                    self._send(200, server.complete(body))
                except (BrokenPipeError, ConnectionResetError):
                    pass

        class Server(ThreadingHTTPServer):
            daemon_threads = False  # server_close() waits for requests still being answered

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def complete(self, body: dict) -> dict:
        messages, images = [], []
        for m in body["messages"]:
            if isinstance(m["content"], str):
                messages.append(m)
                continue
            parts = []
            for part in m["content"]:
                if part["type"] == "image_url":
                    data = part["image_url"]["url"].split(",", 1)[1]
                    images.append(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
                    parts.append({"type": "image"})
                else:
                    parts.append({"type": "text", "text": part["text"]})
            messages.append({"role": m["role"], "content": parts})
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = self.processor(text=[text], images=images or None, return_tensors="pt")
        with self.lock, torch.inference_mode():
            out = self.model.generate(
                **inputs,
                max_new_tokens=body.get("max_tokens", 64),
                do_sample=False,
                logits_processor=[scripted(self.tokenizer, self.script)],
                stop_strings=body.get("stop"),
                tokenizer=self.tokenizer,
                eos_token_id=self.tokenizer.convert_tokens_to_ids("<|im_end|>"),
                pad_token_id=self.tokenizer.pad_token_id,
            )
        reply = self.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        finish = "length"
        for stop in body.get("stop") or []:  # like vLLM: the stop string is not in the reply
            if stop in reply:
                reply, finish = reply[: reply.index(stop)], "stop"
        if out[0, -1] == self.tokenizer.convert_tokens_to_ids("<|im_end|>"):
            finish = "stop"
        return {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": finish}
            ],
        }

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server():
    with TinyServer() as s:
        yield s


def photo(w, h, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_openai_backend_end_to_end(server):
    server.requests.clear()
    a = OpenAIAssessor(
        server.url, min_pixels=28 * 28, max_pixels=112 * 112, concurrency=3, prompt_style="plain"
    )
    assert a.transport.model == "tiny-qwen"  # asked the server
    images = [photo(200, 100, 0), photo(90, 120, 1), photo(64, 64, 2)]
    results = a.assess_results(images)
    assert [r.error for r in results] == [None, None, None]
    for img, r in zip(images, results):
        d = r.diagnosis
        h, w = img.shape[:2]
        assert d.score == 2.5 and d.backend == "openai" and d.image_size == (w, h)
        assert d.regions[0].bbox == [0, h // 2, int(np.ceil(w / 4)), h]  # fractions -> source pixels
        traj = r.trajectories[0]
        assert traj.zooms[0].requested == (0, h // 4, w // 2, int(np.ceil(h * 0.75)))
        assert traj.generations[0].text.endswith("</tool_call>")  # the stop string put back
        assert [m.kind for m in traj.messages] == ["prompt", "model", "tool", "model"]
    assert len(server.requests) == 6  # two turns per image
    firsts = [r for r in server.requests if len(r["messages"]) == 1]  # requests arrive in any order
    seconds = [r for r in server.requests if len(r["messages"]) == 3]
    assert len(firsts) == len(seconds) == 3
    first = firsts[0]
    assert first["stop"] == ["</tool_call>", "</answer>"] and first["temperature"] == 0.0
    assert first["model"] == "tiny-qwen" and first["max_tokens"] == 512
    sizes = []
    for request in firsts:
        url = request["messages"][0]["content"][0]["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")
        sizes.append(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size)
    assert sorted(sizes) == sorted(a.frame_size(img) for img in images)  # already what the model sees
    second = seconds[0]
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
    assert second["messages"][2]["content"][0]["text"].startswith("<tool_response>")


def test_retries_then_success(server):
    server.fail_next = 2
    a = OpenAIAssessor(server.url, model="tiny-qwen", retries=2, max_pixels=112 * 112, prompt_style="plain")
    d = a.assess(photo(80, 80))
    assert d.score == 2.5 and server.fail_next == 0


def test_failures_and_timeouts_never_stop_the_batch(server):
    a = OpenAIAssessor(server.url, model="tiny-qwen", retries=0, max_pixels=112 * 112, prompt_style="plain")
    server.fail_next = 1
    results = a.assess_results([photo(80, 80, 0), photo(80, 80, 1)])
    errors = [r.error for r in results]
    assert sum(e is not None for e in errors) == 1
    assert any(e and "HTTP 503" in e and "after 1 attempt" in e for e in errors)
    assert all(r.diagnosis.score == 2.5 for r in results if r.error is None)
    server.slow_marker = "Rate the quality"  # the first turn of every image is too slow
    try:
        a = OpenAIAssessor(server.url, model="tiny-qwen", retries=0, timeout=0.5, prompt_style="plain")
        t0 = time.perf_counter()
        results = a.assess_results([photo(80, 80, 2), photo(80, 80, 3)])
        assert time.perf_counter() - t0 < 1.9  # concurrent, and no waiting beyond the timeout
    finally:
        server.slow_marker = None
    for r in results:
        assert "no answer from" in r.error and "within 0.5 s" in r.error


def test_client_errors_are_one_line():
    with pytest.raises(ValueError, match="base_url must look like"):
        normalize_base_url("localhost:8000")
    assert normalize_base_url("http://h:1") == "http://h:1/v1"
    assert normalize_base_url("http://h:1/v1/") == "http://h:1/v1"
    client = OpenAIClient("http://127.0.0.1:9", retries=0, timeout=2)
    with pytest.raises(ServerError, match="cannot reach http://127.0.0.1:9/v1/models"):
        client.request("/models")
    with pytest.raises(RuntimeError, match="pass --model"):
        OpenAIAssessor("http://127.0.0.1:9", retries=0, timeout=2)
    with pytest.raises(ValueError, match="needs --base-url"):
        OpenAIAssessor()


def test_stop_string_restoration_and_logprobs():
    assert restore_stop_string('<tool_call>{"a": 1}') == '<tool_call>{"a": 1}</tool_call>'
    assert restore_stop_string("<think>x</think><answer>3") == "<think>x</think><answer>3</answer>"
    assert restore_stop_string("<answer>3</answer>") == "<answer>3</answer>"
    content = [
        {"token": "<answer>", "logprob": -0.1, "top_logprobs": []},
        {"token": "4", "logprob": np.log(0.5), "top_logprobs": [{"token": "4", "logprob": np.log(0.5)},
                                                              {"token": "3", "logprob": np.log(0.3)},
                                                              {"token": "x", "logprob": np.log(0.1)}]},
    ]  # fmt: skip
    probs, offsets = rating_probs_from_logprobs(content)
    assert offsets == [0, 8]
    assert probs[0] == [0.0] * 5
    assert probs[1] == pytest.approx([0.0, 0.0, 0.3, 0.5, 0.0])


def test_cli_openai_backend(server, tmp_path):
    paths = []
    for i, (w, h) in enumerate([(120, 80), (64, 96)]):
        p = tmp_path / f"im{i}.png"
        Image.fromarray(photo(w, h, i)).save(p)
        paths.append(str(p))
    env = dict(os.environ, PYTHONPATH=str(REPO), OPENAI_API_KEY="test-key")
    cmd = [sys.executable, "-m", "assessor", *paths, "--backend", "openai", "--base-url", server.url, "--json",
           "--max-pixels", str(112 * 112), "--prompt-style", "plain", "--concurrency", "2"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(line["image"], line["score"], line["backend"]) for line in lines] == [
        (p, 2.5, "openai") for p in paths
    ]
    assert lines[0]["regions"][0]["bbox"] == [0, 40, 30, 80]
    wrong = subprocess.run(
        [sys.executable, "-m", "assessor", paths[0], "--backend", "openai", "--base-url", server.url, "--dtype", "bf16"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert wrong.returncode == 2 and "--dtype applies to the vlm backend" in wrong.stderr
