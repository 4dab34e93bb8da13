"""Chat over any OpenAI-compatible `/v1/chat/completions` endpoint (OpenAI, vLLM, llama.cpp server, ...).

One HTTP request per completion, a few in flight at once: every completion
index then has its own cache entry and seed, so `n` behaves the same as with
the local backend and a crashed run resumes exactly where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from mrrec_lib.config import Config
from mrrec_lib.llm.base import Completion, Message, Sampling, Tool, Usage, check_sampling, tool_schemas
from mrrec_lib.llm.cache import Request, ResponseCache, cached_generate

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class LLMRequestError(RuntimeError):
    """The endpoint refused a request, or kept failing after all retries."""


class OpenAIChat:
    """A `ChatLLM` talking to an OpenAI-compatible server."""

    def __init__(
        self,
        model: str,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str | None = None,
        *,
        cache: ResponseCache | None = None,
        timeout: float = 120.0,
        max_retries: int = 5,
        concurrency: int = 8,
        backoff: float = 1.0,
        transport: httpx.BaseTransport | None = None,
    ):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.name = model
        self.base_url = base_url.rstrip("/")
        self.cache = cache
        self.max_retries = max_retries
        self.concurrency = max(1, concurrency)
        self.backoff = backoff
        self.usage = Usage()
        self.client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    @classmethod
    def from_config(cls, cfg: Config, model: str | None = None, cache: ResponseCache | None = None) -> OpenAIChat:
        api_key = os.environ.get(cfg.llm_api_key_env) if cfg.llm_api_key_env else None
        return cls(
            model or cfg.llm_model,
            cfg.llm_base_url or DEFAULT_BASE_URL,
            api_key,
            cache=cache,
            timeout=cfg.llm_request_timeout,
            max_retries=cfg.llm_max_retries,
            concurrency=cfg.llm_batch_size,
        )

    def chat(
        self,
        conversations: list[list[Message]],
        sampling: Sampling,
        n: int = 1,
        tools: list[Tool] | None = None,
    ) -> list[list[str]]:
        check_sampling(sampling)
        schemas = tool_schemas(tools)

        def generate(requests: list[Request]) -> list[Completion]:
            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
                return list(pool.map(lambda r: self._complete(r[0], sampling, r[1], schemas), requests))

        return cached_generate(
            model=f"{self.base_url}|{self.name}",
            conversations=conversations,
            sampling=sampling,
            n=n,
            tools=schemas,
            cache=self.cache,
            usage=self.usage,
            batch_size=self.concurrency,
            generate=generate,
            desc=f"chat ({self.name})",
        )

    def _complete(
        self, messages: list[Message], sampling: Sampling, index: int, tools: list[Tool] | None
    ) -> Completion:
        payload: dict[str, Any] = {
            "model": self.name,
            "messages": to_openai_messages(messages),
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_new_tokens,
            "seed": _request_seed(sampling.seed, index),
        }
        if sampling.stop:
            payload["stop"] = list(sampling.stop)
        if tools:
            payload["tools"] = tools
        data = self._post(payload)
        try:
            message = data["choices"][0]["message"]
        except (KeyError, IndexError, TypeError) as e:
            raise LLMRequestError(f"{self.base_url}: response without choices[0].message: {str(data)[:300]}") from e
        usage = data.get("usage") or {}
        return Completion(
            text=render_tool_calls(message),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        """POST with exponential backoff (and jitter) on rate limits, server errors and network failures."""
        last = ""
        for attempt in range(self.max_retries + 1):
            try:
                resp = self.client.post("/chat/completions", json=payload)
            except (httpx.TimeoutException, httpx.TransportError) as e:
                last = f"{type(e).__name__}: {e}"
                retry_after = None
            else:
                if resp.status_code < 400:
                    try:
                        return resp.json()
                    except json.JSONDecodeError as e:
                        raise LLMRequestError(f"{self.base_url}: non-JSON response: {resp.text[:300]}") from e
                if resp.status_code not in RETRY_STATUS:
                    raise LLMRequestError(
                        f"{self.base_url}/chat/completions -> HTTP {resp.status_code}: {resp.text[:500]}"
                    )
                last = f"HTTP {resp.status_code}: {resp.text[:200]}"
                retry_after = _retry_after(resp)
            if attempt < self.max_retries:
                delay = retry_after if retry_after is not None else self.backoff * 2**attempt * (0.5 + random.random())
                log.warning("%s: %s; retry %d/%d in %.1fs", self.base_url, last, attempt + 1, self.max_retries, delay)
                time.sleep(min(delay, 120.0))
        raise LLMRequestError(f"{self.base_url}: giving up after {self.max_retries + 1} attempts; last error {last}")

    def close(self) -> None:
        self.client.close()


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        return float(resp.headers["retry-after"])
    except (KeyError, ValueError):
        return None


def _request_seed(seed: int, index: int) -> int:
    """Distinct seeds for the `n` completions of one conversation (servers that honour `seed` then differ)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:4], "big") >> 1


def to_openai_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Our conversations use chat-template conventions (tool-call arguments as dicts, no ids); the API wants
    JSON-string arguments and a `tool_call_id` on every tool message."""
    out: list[dict[str, Any]] = []
    pending: list[str] = []
    for i, m in enumerate(messages):
        m = dict(m)
        if m.get("role") == "assistant" and m.get("tool_calls"):
            calls = []
            for j, call in enumerate(m["tool_calls"]):
                fn = dict(call.get("function", call))
                if not isinstance(fn.get("arguments"), str):
                    fn["arguments"] = json.dumps(fn.get("arguments", {}), ensure_ascii=False)
                calls.append({"id": call.get("id") or f"call_{i}_{j}", "type": "function", "function": fn})
            m["tool_calls"] = calls
            pending = [c["id"] for c in calls]
        elif m.get("role") == "tool" and "tool_call_id" not in m:
            m["tool_call_id"] = pending.pop(0) if pending else f"call_{i}"
        out.append(m)
    return out


def render_tool_calls(message: dict[str, Any]) -> str:
    """The assistant text, with any structured tool calls appended as Qwen2.5-style `<tool_call>` blocks."""
    parts = [message["content"]] if message.get("content") else []
    for call in message.get("tool_calls") or []:
        fn = call.get("function", {})
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                pass  # keep the raw string: the agent's parser counts it as malformed
        block = json.dumps({"name": fn.get("name", ""), "arguments": args}, ensure_ascii=False)
        parts.append(f"<tool_call>\n{block}\n</tool_call>")
    return "\n".join(parts)
