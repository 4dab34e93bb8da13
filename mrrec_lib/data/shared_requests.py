"""`query_builder: shared`: the fixed C4-style requests of the shared data, joined to our targets.

`c4_style_requests/requests.jsonl` holds one line per target, `{source, user_id,
parent_asin, timestamp, request, simple_request}`, written by a large LLM from the
review title and text alone (never the product), like Amazon-C4's writer. They
are benchmark inputs, like Amazon-C4's own requests, so they are read strictly:
a malformed line is an error naming its file and line, and a request that finds
no target is counted and reported with examples, never dropped silently.

Join keys per request source (`SOURCES` maps them to our source names):
- `amazon2023_multicat`, `amazon2023_beauty` (our `amazon2023_reviews`):
  user_id + parent_asin (our item_id) + timestamp in ms;
- `agenticshop`: user_id alone (one held-out target per user; parent_asin is
  empty and timestamp 0 in the file).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from mrrec_lib.config import Config
from mrrec_lib.data.queries import SHARED_COLUMNS
from mrrec_lib.data.readers import SkipLog
from mrrec_lib.data.text import clean_text
from mrrec_lib.runs import shared_data_path

SOURCES = {"amazon2023_multicat": "amazon2023_multicat", "amazon2023_beauty": "amazon2023_reviews",
           "agenticshop": "agenticshop"}  # fmt: skip
USER_KEYED = frozenset({"agenticshop"})  # our source names joined on user_id alone
FIELDS = ("source", "user_id", "parent_asin", "timestamp", "request", "simple_request")
SKIP_SOURCE = "shared_requests"
_EXAMPLES = 5


class SharedRequestsError(ValueError):
    """A requests file that cannot be used as benchmark input."""


def _line(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise SharedRequestsError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in FIELDS if k not in obj or obj[k] is None]
    if missing:
        raise SharedRequestsError(f"{where}: missing field(s) {missing}")
    if obj["source"] not in SOURCES:
        raise SharedRequestsError(f"{where}: unknown source {obj['source']!r}; known: {sorted(SOURCES)}")
    ts = obj["timestamp"]
    if isinstance(ts, bool) or not isinstance(ts, int | float) or ts != int(ts):
        raise SharedRequestsError(f"{where}: field 'timestamp' must be an integer (ms), got {ts!r}")
    request, simple = clean_text(obj["request"]), clean_text(obj["simple_request"])
    for name, text in (("request", request), ("simple_request", simple)):
        if not text:
            raise SharedRequestsError(f"{where}: field {name!r} is empty")
    source = SOURCES[obj["source"]]
    user, item, ts = str(obj["user_id"]), str(obj["parent_asin"]), int(ts)
    key = (source, user) if source in USER_KEYED else (source, user, item, ts)
    return {"source": source, "key": key, "request": request, "simple_request": simple, "where": where}


def read_requests(paths: list[Path]) -> list[dict[str, Any]]:
    """Every request line of `paths` with its join key; any malformed or duplicate line raises, naming file:line."""
    rows: list[dict[str, Any]] = []
    seen: dict[tuple, str] = {}
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"shared requests file not found: {path} (config shared_requests_files)")
        with open(path, encoding="utf-8") as f:
            for lineno, text in enumerate(f, 1):
                if not text.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    raise SharedRequestsError(f"{where}: not valid JSON ({e.msg}, column {e.colno})") from e
                row = _line(obj, where)
                if row["key"] in seen:
                    raise SharedRequestsError(f"{where}: same join key {row['key']} as {seen[row['key']]}")
                seen[row["key"]] = where
                rows.append(row)
    return rows


def _target_key(t: dict[str, Any]) -> tuple:
    if t["source"] in USER_KEYED:
        return (t["source"], t["user_id"])
    return (t["source"], t["user_id"], t["item_id"], int(t["timestamp"]))


def join_shared_requests(
    targets: pd.DataFrame, cfg: Config, skips: SkipLog, loaded_users: dict[str, set[str]] | None = None
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The targets that have a shared request (with `SHARED_COLUMNS` added), and a join report.

    Targets with a request of their own source (Amazon-C4's `raw_query`) pass
    through. Every other target without a request is dropped and counted
    (`queries/no_shared_request`); every request without a target is counted
    with examples under `shared_requests/<reason>`: `source_not_loaded` (its source
    is not in `cfg.sources`), `user_not_loaded` (its user is not among
    `loaded_users[source]`, e.g. left out by `max_users`), else
    `request_without_target` (the loader rejected that target, e.g. its item has
    no text). No request matching any target is an error: the files and the
    loaded data do not belong together.
    """
    requests = read_requests([shared_data_path(cfg, rel) for rel in cfg.shared_requests_files])
    by_key = {r["key"]: r for r in requests}
    rows = targets.to_dict("records")
    own = targets["raw_query"].fillna("").str.strip().ne("")
    keys = [_target_key(t) for t in rows]
    matched = [k in by_key for k in keys]
    keep = own | pd.Series(matched, index=targets.index)
    for t, k in zip(rows, keys, strict=True):
        if k not in by_key and not t["raw_query"].strip():
            skips.add("queries", "no_shared_request", t["qid"])
    used = {k for k, m in zip(keys, matched, strict=True) if m}
    unmatched: dict[str, list[str]] = {}
    reasons: Counter = Counter()
    for r in requests:
        if r["key"] in used:
            continue
        if r["source"] not in cfg.sources:
            reason = "source_not_loaded"
        elif loaded_users is not None and r["key"][1] not in loaded_users.get(r["source"], set()):
            reason = "user_not_loaded"
        else:
            reason = "request_without_target"
        skips.add(SKIP_SOURCE, reason, f"{r['where']} {r['key']}")
        reasons[reason] += 1
        unmatched.setdefault(r["source"], []).append(f"{r['where']} {r['key']}: {reason}")
    need = int((~own).sum())
    if need and not used:
        raise SharedRequestsError(
            f"none of the {len(requests)} shared requests in {cfg.shared_requests_files} matches any of the {need} "
            f"targets of sources {sorted(set(targets['source']))}; check shared_data_dir, shared_requests_files "
            "and sources (or use query_builder: extractive)"
        )
    out = targets[keep].copy()
    hits = [by_key.get(k) for k, k_keep in zip(keys, keep, strict=True) if k_keep]
    out[SHARED_COLUMNS[0]] = [h["request"] if h else "" for h in hits]
    out[SHARED_COLUMNS[1]] = [h["simple_request"] if h else "" for h in hits]
    per_source = {}
    for source in sorted({r["source"] for r in requests} | set(targets["source"])):
        src_req = sum(r["source"] == source for r in requests)
        src_used = sum(k[0] == source for k in used)
        per_source[source] = {
            "requests": src_req,
            "matched": src_used,
            "unmatched": src_req - src_used,
            "targets_without_request": int(((targets["source"] == source) & ~keep).sum()),
        }
    report = {
        "files": list(cfg.shared_requests_files),
        "requests": len(requests),
        "matched": len(used),
        "unmatched": len(requests) - len(used),
        "unmatched_per_reason": dict(sorted(reasons.items())),
        "targets_without_request": int((~keep).sum()),
        "per_source": per_source,
        "unmatched_examples": {s: ex[:_EXAMPLES] for s, ex in sorted(unmatched.items())},
    }
    return out.reset_index(drop=True), report
