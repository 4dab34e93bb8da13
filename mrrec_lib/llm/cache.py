"""On-disk LLM response cache, and the generic cached-generation loop all backends share.

Why sqlite: one file, stdlib, atomic commits, and in WAL mode several processes
(parallel notebooks, a crashed run being resumed) can read and write it at once.
Every finished batch is committed before the next one starts, so a killed run
loses at most one batch and a rerun generates only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from mrrec_lib.llm.base import Completion, Message, Sampling, Tool, Usage

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    text TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    created REAL NOT NULL
)
"""

Request = tuple[list[Message], int]  # (conversation, completion index)


def cache_key(
    model: str, messages: list[Message], sampling: Sampling, index: int, tools: list[Tool] | None = None
) -> str:
    """sha256 over everything that can change a completion.

    Greedy decoding ignores seed, top_p and the completion index, so those are
    normalised away at temperature 0: `n` greedy completions cost one generation.
    """
    params = asdict(sampling)
    params["stop"] = list(sampling.stop)
    if sampling.temperature == 0:
        params.update(seed=0, top_p=1.0)
        index = 0
    blob = json.dumps(
        {"model": model, "messages": messages, "sampling": params, "index": index, "tools": tools or []},
        sort_keys=True,
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """A key -> Completion store in one sqlite file, safe across threads and processes."""

    def __init__(self, path: str | Path, timeout: float = 60.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._timeout = timeout
        self._local = threading.local()
        with self._conn() as con:
            con.execute(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=self._timeout)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            self._local.con = con
        return con

    def get_many(self, keys: list[str]) -> dict[str, Completion]:
        out: dict[str, Completion] = {}
        con = self._conn()
        unique = list(dict.fromkeys(keys))
        for i in range(0, len(unique), 500):  # stay under sqlite's bound-parameter limit
            chunk = unique[i : i + 500]
            rows = con.execute(
                f"SELECT key, text, prompt_tokens, completion_tokens FROM responses "
                f"WHERE key IN ({','.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
            out.update({k: Completion(t, p, c) for k, t, p, c in rows})
        return out

    def put_many(self, model: str, items: dict[str, Completion]) -> None:
        now = time.time()
        with self._conn() as con:  # one transaction: a batch is stored whole or not at all
            con.executemany(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?)",
                [(k, model, c.text, c.prompt_tokens, c.completion_tokens, now) for k, c in items.items()],
            )

    def __len__(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None


def cached_generate(
    *,
    model: str,
    conversations: list[list[Message]],
    sampling: Sampling,
    n: int,
    tools: list[Tool] | None,
    cache: ResponseCache | None,
    usage: Usage,
    batch_size: int,
    generate: Callable[[list[Request]], list[Completion]],
    desc: str = "generate",
) -> list[list[str]]:
    """Serve what the cache has, generate the rest in batches, store each batch as it finishes.

    Identical requests (same conversation twice, or `n` greedy completions) are
    generated once. Batches are formed from prompts sorted by length so a local
    model pads little.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    for i, conv in enumerate(conversations):
        if not isinstance(conv, list) or not conv:
            raise ValueError(f"conversation {i} must be a non-empty list of messages, got {conv!r:.80}")
    keys = [[cache_key(model, conv, sampling, j, tools) for j in range(n)] for conv in conversations]
    flat = [k for row in keys for k in row]
    found = cache.get_many(flat) if cache is not None else {}
    usage.cache_hits += sum(k in found for k in flat)

    missing: dict[str, Request] = {}
    for conv, row in zip(conversations, keys, strict=True):
        for j, k in enumerate(row):
            if k not in found and k not in missing:
                missing[k] = (conv, j)
    order = sorted(missing, key=lambda k: len(json.dumps(missing[k][0], default=str)))
    batches = [order[i : i + batch_size] for i in range(0, len(order), max(1, batch_size))]
    for batch in tqdm(batches, desc=desc, unit="batch", disable=len(batches) <= 1):
        start = time.perf_counter()
        outs = generate([missing[k] for k in batch])
        usage.seconds += time.perf_counter() - start
        if len(outs) != len(batch):
            raise RuntimeError(f"{desc}: backend returned {len(outs)} completions for {len(batch)} requests")
        produced = dict(zip(batch, outs, strict=True))
        usage.calls += len(produced)
        usage.prompt_tokens += sum(c.prompt_tokens for c in outs)
        usage.completion_tokens += sum(c.completion_tokens for c in outs)
        if cache is not None:
            cache.put_many(model, produced)
        found.update(produced)
    return [[found[k].text for k in row] for row in keys]
