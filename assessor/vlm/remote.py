"""The ``openai`` backend: the same iMCoT loop against an OpenAI-compatible chat server.

This is how the critic runs at scale: serve the model with vLLM or SGLang on as many GPUs as
needed (their prefix caching reuses the conversation's KV cache between turns) and point this
backend at it. Images travel as PNG data URLs (lossless: a quality critic must not see JPEG
artifacts we added), already resized to what the model's processor would make of them, so the
boxes the model writes are in pixels we know. Requests run concurrently, with timeouts and
retries; standard library only.
"""

from __future__ import annotations

import base64
import json
import math
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cv2
import numpy as np

from .loop import (
    DEFAULT_MAX_PIXELS,
    RATING_DIGITS,
    Generation,
    LoopAssessor,
    LoopConfig,
    Message,
    Trajectory,
    loop_config,
    smart_resize,
)
from .prompts import STOP_STRINGS

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class ServerError(RuntimeError):
    """A request that failed for good (after retries); the message is one line."""


def png_data_url(image: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("could not encode the image as PNG")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def normalize_base_url(base_url: str) -> str:
    """``http://host:8000`` and ``http://host:8000/v1/`` both mean ``http://host:8000/v1``."""
    url = base_url.strip().rstrip("/")
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"base_url must look like http://host:8000/v1, got {base_url!r}")
    if parsed.path in ("", "/"):
        url += "/v1"
    return url


def rating_probs_from_logprobs(content: list[dict[str, Any]]) -> tuple[list[list[float]], list[int]]:
    """Per generated token, P("1") .. P("5") from the server's top logprobs (0 where a digit is
    not among them), and where each token starts in the text."""
    digits = [str(d) for d in RATING_DIGITS]
    probs, offsets, pos = [], [], 0
    for entry in content:
        offsets.append(pos)
        pos += len(entry.get("token", ""))
        row = [0.0] * len(digits)
        candidates = list(entry.get("top_logprobs") or [])
        candidates.append({"token": entry.get("token"), "logprob": entry.get("logprob")})
        for cand in candidates:
            token = (cand.get("token") or "").strip()
            if token in digits and cand.get("logprob") is not None:
                row[digits.index(token)] = math.exp(float(cand["logprob"]))
        probs.append(row)
    return probs, offsets


def restore_stop_string(text: str) -> str:
    """Servers drop the stop string from the text; put back the closing tag of the open block."""
    for open_tag, close_tag in (("<tool_call>", "</tool_call>"), ("<answer>", "</answer>")):
        start = text.rfind(open_tag)
        if start >= 0 and close_tag not in text[start:]:
            others = [text.rfind(o) for o in ("<tool_call>", "<answer>") if o != open_tag]
            if all(start > o for o in others):
                return text + close_tag
    return text


class OpenAIClient:
    """A minimal JSON client for /v1 endpoints: timeouts, retries with backoff, one-line errors."""

    def __init__(
        self, base_url: str, *, api_key: str | None = None, timeout: float = 120.0, retries: int = 2
    ):
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, got {retries}")
        self.base_url = normalize_base_url(base_url)
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout = float(timeout)
        self.retries = int(retries)

    def request(self, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        url = self.base_url + path
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(8.0, 0.5 * 2 ** (attempt - 1)))
            req = urllib.request.Request(
                url, data=data, headers=headers, method="GET" if data is None else "POST"
            )
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read().decode("utf-8"))
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode("utf-8", "replace").strip().replace("\n", " ")[:300]
                last = f"HTTP {exc.code} from {url}: {detail or exc.reason}"
                if exc.code not in RETRY_STATUS:
                    raise ServerError(last) from None
            except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                if isinstance(reason, TimeoutError) or "timed out" in str(reason):
                    last = f"no answer from {url} within {self.timeout:g} s"
                else:
                    last = f"cannot reach {url}: {reason}"
            except json.JSONDecodeError:
                last = f"{url} did not answer with JSON"
        tries = self.retries + 1
        raise ServerError(f"{last} (after {tries} attempt{'s' if tries != 1 else ''})")


class OpenAITransport:
    """Produces model turns by chat completions; one conversation per image, run concurrently."""

    name = "openai"

    def __init__(
        self,
        client: OpenAIClient,
        model: str,
        *,
        concurrency: int = 8,
        min_pixels: int = 56 * 56,
        max_pixels: int = 1280 * 28 * 28,
        factor: int = 28,
        top_logprobs: int = 20,
        extra_body: dict[str, Any] | None = None,
    ):
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.client = client
        self.model = model
        self.concurrency = int(concurrency)
        self.min_pixels, self.max_pixels, self.factor = int(min_pixels), int(max_pixels), int(factor)
        self.top_logprobs = int(top_logprobs)
        self.extra_body = dict(extra_body or {})

    def frame_size(self, image: np.ndarray) -> tuple[int, int]:
        h, w = smart_resize(image.shape[0], image.shape[1], self.factor, self.min_pixels, self.max_pixels)
        return (w, h)

    def shown(self, image: np.ndarray) -> np.ndarray:
        """The image resized the way the server's processor would, so it will not resize again."""
        w, h = self.frame_size(image)
        if (w, h) == (image.shape[1], image.shape[0]):
            return image
        interp = cv2.INTER_AREA if w * h < image.shape[0] * image.shape[1] else cv2.INTER_CUBIC
        return cv2.resize(image, (w, h), interpolation=interp)

    def open(self, trajectories: list[Trajectory]) -> OpenAIBatch:
        return OpenAIBatch(self, trajectories)


class OpenAIBatch:
    def __init__(self, transport: OpenAITransport, trajectories: list[Trajectory]):
        self.t = transport
        self.trajs = trajectories
        self.urls: dict[int, str] = {}  # id(image array) -> data URL, encoded once per image
        self.pool = ThreadPoolExecutor(max_workers=transport.concurrency, thread_name_prefix="qds-openai")

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.urls.clear()

    def _url(self, image: np.ndarray) -> str:
        key = id(image)
        if key not in self.urls:
            self.urls[key] = png_data_url(self.t.shown(image))
        return self.urls[key]

    def _message(self, message: Message) -> dict[str, Any]:
        if all(isinstance(p, str) for p in message.content):
            return {"role": message.role, "content": message.text()}
        parts = [
            {"type": "text", "text": p}
            if isinstance(p, str)
            else {"type": "image_url", "image_url": {"url": self._url(p.image)}}
            for p in message.content
        ]
        return {"role": message.role, "content": parts}

    def payload(self, traj: Trajectory) -> dict[str, Any]:
        config: LoopConfig = traj.config
        body: dict[str, Any] = {
            "model": self.t.model,
            "messages": [self._message(m) for m in traj.messages],
            "max_tokens": config.max_new_tokens,
            "stop": list(STOP_STRINGS),
            "temperature": config.temperature if config.sampling else 0.0,
            "seed": config.seed + 7919 * traj.sample + 104729 * traj.turns,
        }
        if config.sampling:
            body["top_p"] = config.top_p
        if config.wants_rating_probs:
            body["logprobs"] = True
            body["top_logprobs"] = self.t.top_logprobs
        body.update(self.t.extra_body)
        return body

    def _one(self, row: int) -> Generation:
        traj = self.trajs[row]
        t0 = time.perf_counter()
        try:
            reply = self.t.client.request("/chat/completions", self.payload(traj))
            choice = reply["choices"][0]
            text = choice.get("message", {}).get("content") or ""
            finish = choice.get("finish_reason") or "stop"
        except ServerError as exc:
            return Generation("", finish_reason="error", error=str(exc))
        except (KeyError, IndexError, TypeError, AttributeError):
            return Generation("", finish_reason="error", error="the server's reply has no choices[0].message")
        finally:
            traj.timings["request_s"] = round(
                traj.timings.get("request_s", 0.0) + time.perf_counter() - t0, 4
            )
        gen = Generation(text, finish_reason="length" if finish == "length" else "stop")
        content = (choice.get("logprobs") or {}).get("content")
        if content:
            gen.rating_probs, gen.token_offsets = rating_probs_from_logprobs(content)
        if finish != "length":
            gen.text = restore_stop_string(text)
        return gen

    def generate(self, rows: list[int]) -> list[Generation]:
        return list(self.pool.map(self._one, rows))


class OpenAIAssessor(LoopAssessor):
    """The Q-DeepSight critic served by an OpenAI-compatible server (vLLM, SGLang, ...).

    ``model`` is the served model name (default: the first one the server lists). ``min_pixels``
    / ``max_pixels`` must match the server's processor bounds (vLLM's defaults are Qwen's) so the
    image is not resized again and boxes stay in known pixels.
    """

    name = "openai"

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        retries: int = 2,
        concurrency: int = 8,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        batch_size: int = 64,
        extra_body: dict[str, Any] | None = None,
        config: LoopConfig | None = None,
        **loop_options: Any,
    ):
        config = loop_config(config, loop_options, "openai")
        if not base_url:
            raise ValueError(
                "the openai backend needs --base-url, e.g. http://127.0.0.1:8000/v1 (a vLLM server)"
            )
        client = OpenAIClient(base_url, api_key=api_key, timeout=timeout, retries=retries)
        model = model or self._served_model(client)
        transport = OpenAITransport(
            client,
            model,
            concurrency=concurrency,
            min_pixels=min_pixels if min_pixels is not None else 56 * 56,
            max_pixels=max_pixels if max_pixels is not None else DEFAULT_MAX_PIXELS,
            extra_body=extra_body,
        )
        super().__init__(transport, config, batch_size)

    @staticmethod
    def _served_model(client: OpenAIClient) -> str:
        try:
            listing = client.request("/models")
            return str(listing["data"][0]["id"])
        except ServerError as exc:
            raise RuntimeError(f"cannot ask the server which model it serves ({exc}); pass --model") from None
        except (KeyError, IndexError, TypeError):
            raise RuntimeError(f"{client.base_url}/models lists no model; pass --model") from None
