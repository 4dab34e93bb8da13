"""Text shaping for memory entries: sentence-aware chunks, id slugs, canonical aspect names.

Entries must be short and self-contained because the policy sees only the top-k
of them per tool call, and their ids must not change between reruns because the
policy cites them (`useful_memory_ids`).
"""

from __future__ import annotations

import hashlib
import json
import re
import textwrap
from typing import Any

from mrrec_lib.data.text import clean_text

_SENTENCE = re.compile(r"(?:(?<=[.!?;])|(?<=[.!?;][\"')]))\s+(?=[A-Z0-9\"'(])|\n+")
_CLAUSE = re.compile(r"(?<=[,;:])\s+")
_BULLET = re.compile(r"^\s*(?:[-*•·]+|\d+[.)])\s*")
_MARKDOWN = re.compile(r"[*#`_]{1,3}")
_FENCE = re.compile(r"```[a-zA-Z0-9_-]*")
_NON_WORD = re.compile(r"[^0-9a-z]+")


def content_hash(obj: Any) -> str:
    """A short digest of any JSON-able value: the key under which identical work is shared."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:20]


def slug(name: str) -> str:
    """`Snacks & Sweets` -> `snacks_sweets`: the category part of a pattern id."""
    return _NON_WORD.sub("_", clean_text(name).lower()).strip("_") or "other"


def canonical_aspect(name: object) -> str:
    """Title Case with punctuation dropped, so `price-sensitivity` and `Price sensitivity` merge."""
    words = re.sub(r"[^0-9A-Za-z&/ ]+", " ", clean_text(name)).split()
    return " ".join(w if w.isupper() and len(w) > 1 else w.capitalize() for w in words)


def split_sentences(text: str) -> list[str]:
    """Sentences and list items, each ending in punctuation so packed chunks stay readable."""
    out = []
    for part in _SENTENCE.split(text):
        s = _BULLET.sub("", part).strip()
        if not s:
            continue
        out.append(s if s[-1] in ".!?;:\"')" else s + ".")
    return out


def _pieces(sentence: str, max_chars: int) -> list[str]:
    """An overlong sentence split at clause boundaries first, and inside a clause only when that is overlong too."""
    if len(sentence) <= max_chars:
        return [sentence]
    return [w for clause in _CLAUSE.split(sentence) for w in textwrap.wrap(clause, max(20, max_chars)) or [clause]]


def chunk_text(text: str, max_chars: int) -> list[str]:
    """Greedily pack whole sentences into chunks of at most `max_chars`; split only overlong sentences."""
    chunks: list[str] = []
    current = ""
    for sentence in split_sentences(text):
        for piece in _pieces(sentence, max_chars):
            if current and len(current) + 1 + len(piece) > max_chars:
                chunks.append(current)
                current = piece
            else:
                current = f"{current} {piece}".strip()
    if current:
        chunks.append(current)
    return chunks


def clean_llm_text(text: str) -> str:
    """A free-text LLM summary without fences, markdown marks or verbatim repeated sentences (small-model loops)."""
    text = _MARKDOWN.sub("", _FENCE.sub("", text or ""))
    seen: set[str] = set()
    kept = []
    for s in split_sentences(text):
        key = _NON_WORD.sub(" ", s.lower()).strip()
        if key and key not in seen:
            seen.add(key)
            kept.append(s)
    return " ".join(kept)
