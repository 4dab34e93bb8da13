"""The OpenAI-compatible backend against a scripted HTTP server on 127.0.0.1 (loopback only)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mrrec_lib.config import Config
from mrrec_lib.llm import OpenAIChat, ResponseCache, Sampling, make_llm
from mrrec_lib.llm.openai_compat import LLMRequestError, render_tool_calls, to_openai_messages

CONV = [{"role": "user", "content": "Recommend a tea."}]


def reply(content="ok", prompt_tokens=7, completion_tokens=2, tool_calls=None):
    message = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return 200, {
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
    }


class Server:
    """Serves queued (status, body[, delay]) answers; once the queue is empty, echoes the request's seed."""

    def __init__(self):
        self.queue: list[tuple] = []
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                outer.headers.append(dict(self.headers))
                status, payload, *delay = outer.queue.pop(0) if outer.queue else reply(f"seed={body.get('seed')}")
                if delay:
                    time.sleep(delay[0])
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def client(server, tmp_path=None, **kw) -> OpenAIChat:
    cache = ResponseCache(tmp_path / "c.sqlite") if tmp_path else None
    return OpenAIChat("test-model", server.url, "sk-test", cache=cache, backoff=0.01, **kw)


def test_completion_payload_and_usage(server):
    server.queue.append(reply("Try a green tea.", 11, 5))
    llm = client(server)
    out = llm.chat([CONV], Sampling(temperature=0.5, top_p=0.9, max_new_tokens=30, stop=("\n",)))
    assert out == [["Try a green tea."]]
    req = server.requests[0]
    assert req["model"] == "test-model" and req["messages"] == CONV
    assert (req["temperature"], req["top_p"], req["max_tokens"], req["stop"]) == (0.5, 0.9, 30, ["\n"])
    assert server.headers[0]["Authorization"] == "Bearer sk-test"
    assert (llm.usage.prompt_tokens, llm.usage.completion_tokens, llm.usage.calls) == (11, 5, 1)


def test_retries_a_server_error_then_succeeds(server):
    server.queue += [(500, {"error": "boom"}), (429, {"error": "slow down"}), reply("fine")]
    assert client(server).chat([CONV], Sampling()) == [["fine"]]
    assert len(server.requests) == 3


def test_retries_a_timeout(server):
    server.queue += [(*reply("late"), 1.0), reply("fine")]
    assert client(server, timeout=0.3).chat([CONV], Sampling()) == [["fine"]]


def test_gives_up_after_max_retries_and_does_not_retry_client_errors(server):
    server.queue += [(503, {"error": "down"})] * 3
    with pytest.raises(LLMRequestError, match="giving up after 3 attempts"):
        client(server, max_retries=2).chat([CONV], Sampling())
    server.queue.append((400, {"error": "bad request"}))
    with pytest.raises(LLMRequestError, match="HTTP 400"):
        client(server).chat([CONV], Sampling())
    assert len(server.requests) == 4


def test_cache_makes_reruns_free(server, tmp_path):
    first = client(server, tmp_path)
    a = first.chat([CONV, [{"role": "user", "content": "x"}]], Sampling(temperature=1.0), n=2)
    assert len(server.requests) == 4
    assert all(len(set(row)) == 2 for row in a)  # every completion index got its own seed
    second = client(server, tmp_path)
    assert second.chat([CONV, [{"role": "user", "content": "x"}]], Sampling(temperature=1.0), n=2) == a
    assert len(server.requests) == 4 and second.usage.cache_hits == 4 and second.usage.calls == 0


def test_tool_calls_come_back_as_tool_call_text(server):
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "memory_retrieval_tool", "arguments": '{"query": "tea"}'},
    }
    server.queue.append(reply(None, tool_calls=[call]))

    def memory_retrieval_tool(query: str) -> str:
        """Search the user's memory.

        Args:
            query: what to look for
        """
        return query

    [[text]] = client(server).chat([CONV], Sampling(), tools=[memory_retrieval_tool])
    assert text == '<tool_call>\n{"name": "memory_retrieval_tool", "arguments": {"query": "tea"}}\n</tool_call>'
    assert server.requests[0]["tools"][0]["function"]["name"] == "memory_retrieval_tool"


def test_message_conversion_for_the_api():
    messages = [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"q": 1}}}],
        },
        {"role": "tool", "name": "f", "content": "result"},
    ]
    out = to_openai_messages(messages)
    call = out[1]["tool_calls"][0]
    assert call["function"]["arguments"] == '{"q": 1}' and out[2]["tool_call_id"] == call["id"]
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == {"q": 1}  # input untouched
    assert render_tool_calls(
        {"content": "thinking", "tool_calls": [{"function": {"name": "f", "arguments": "{bad"}}]}
    ) == ('thinking\n<tool_call>\n{"name": "f", "arguments": "{bad"}\n</tool_call>')


def test_make_llm_reads_url_model_and_key_from_config(server, tmp_path, monkeypatch):
    monkeypatch.setenv("MRREC_CACHE", str(tmp_path))
    monkeypatch.setenv("MY_KEY", "sk-env")
    cfg = Config(llm_backend="openai", llm_base_url=server.url, llm_model="gpt-x", llm_api_key_env="MY_KEY")
    llm = make_llm(cfg)
    llm.chat([CONV], Sampling())
    assert server.requests[0]["model"] == "gpt-x" and server.headers[0]["Authorization"] == "Bearer sk-env"
    assert (tmp_path / "llm_cache.sqlite").exists()
    monkeypatch.delenv("MY_KEY")
    make_llm(cfg.model_copy(update={"llm_cache": False}), model="other").chat([CONV], Sampling())
    assert server.requests[1]["model"] == "other" and "Authorization" not in server.headers[1]
