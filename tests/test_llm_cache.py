"""The response cache and the cached-generation loop, with a scripted backend (no model)."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import pytest

from mrrec_lib.llm.base import Completion, Sampling, Usage
from mrrec_lib.llm.cache import ResponseCache, cache_key, cached_generate

CONV = [{"role": "user", "content": "hello"}]


class Scripted:
    """Answers every request with a counter, so each generation is distinguishable; can fail on a chosen call."""

    def __init__(self, fail_on_call: int | None = None):
        self.calls: list[list] = []
        self.fail_on_call = fail_on_call

    def __call__(self, requests):
        self.calls.append(requests)
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise RuntimeError("backend crashed")
        return [Completion(f"{conv[-1]['content']}#{idx}#{len(self.calls)}", 3, 2) for conv, idx in requests]


def run(cache, backend, convs, sampling=None, n=1, usage=None, batch_size=2):
    return cached_generate(
        model="m",
        conversations=convs,
        sampling=sampling or Sampling(),
        n=n,
        tools=None,
        cache=cache,
        usage=usage if usage is not None else Usage(),
        batch_size=batch_size,
        generate=backend,
    )


def convs(k: int) -> list[list[dict]]:
    return [[{"role": "user", "content": f"q{i}"}] for i in range(k)]


def test_key_is_sensitive_to_everything_that_changes_a_completion():
    base = cache_key("m", CONV, Sampling(temperature=0.7, seed=1), 0)
    assert cache_key("m", CONV, Sampling(temperature=0.7, seed=1), 0) == base
    different = [
        cache_key("other", CONV, Sampling(temperature=0.7, seed=1), 0),
        cache_key("m", [{"role": "user", "content": "hello!"}], Sampling(temperature=0.7, seed=1), 0),
        cache_key("m", CONV, Sampling(temperature=0.8, seed=1), 0),
        cache_key("m", CONV, Sampling(temperature=0.7, seed=2), 0),
        cache_key("m", CONV, Sampling(temperature=0.7, seed=1, top_p=0.9), 0),
        cache_key("m", CONV, Sampling(temperature=0.7, seed=1, max_new_tokens=10), 0),
        cache_key("m", CONV, Sampling(temperature=0.7, seed=1, stop=("\n",)), 0),
        cache_key("m", CONV, Sampling(temperature=0.7, seed=1), 1),
        cache_key("m", CONV, Sampling(temperature=0.7, seed=1), 0, tools=[{"type": "function"}]),
    ]
    assert len({base, *different}) == len(different) + 1


def test_greedy_key_ignores_seed_and_index():
    assert cache_key("m", CONV, Sampling(seed=1), 0) == cache_key("m", CONV, Sampling(seed=2, top_p=0.5), 3)


def test_miss_then_hit(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    backend = Scripted()
    usage = Usage()
    first = run(cache, backend, convs(3), usage=usage)
    assert usage.calls == 3 and usage.cache_hits == 0
    assert (usage.prompt_tokens, usage.completion_tokens) == (9, 6)
    second = run(cache, backend, convs(3), usage=usage)
    assert second == first
    assert usage.calls == 3 and usage.cache_hits == 3 and len(backend.calls) == 2  # 3 requests in batches of 2
    assert len(ResponseCache(tmp_path / "c.sqlite")) == 3  # persisted, visible to a new connection


def test_outputs_keep_input_order_and_n(tmp_path):
    out = run(ResponseCache(tmp_path / "c.sqlite"), Scripted(), convs(3), Sampling(temperature=1.0), n=2)
    assert [[t.split("#")[:2] for t in row] for row in out] == [[[f"q{i}", "0"], [f"q{i}", "1"]] for i in range(3)]


def test_greedy_n_and_duplicates_are_generated_once():
    backend = Scripted()
    usage = Usage()
    out = run(None, backend, [CONV, CONV], n=3, usage=usage)
    assert usage.calls == 1
    assert len({t for row in out for t in row}) == 1


def test_crashed_run_resumes_with_only_the_missing_batches(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    with pytest.raises(RuntimeError, match="crashed"):
        run(cache, Scripted(fail_on_call=2), convs(5))
    assert len(cache) == 2  # the first batch was committed before the crash
    backend, usage = Scripted(), Usage()
    run(cache, backend, convs(5), usage=usage)
    assert usage.cache_hits == 2 and usage.calls == 3
    assert sum(len(b) for b in backend.calls) == 3


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="conversation 1"):
        run(None, Scripted(), [CONV, []])
    with pytest.raises(ValueError, match="n must be"):
        run(None, Scripted(), [CONV], n=0)


def _writer(path: str, start: int) -> None:
    cache = ResponseCache(path)
    for i in range(start, start + 100):
        cache.put_many("m", {f"k{i}": Completion(str(i), 1, 1)})


def test_concurrent_processes_share_one_cache(tmp_path):
    path = str(tmp_path / "c.sqlite")
    ResponseCache(path)
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        list(pool.map(_writer, [path, path], [0, 100]))
    cache = ResponseCache(path)
    assert len(cache) == 200
    assert cache.get_many(["k7", "k150"])["k150"].text == "150"
