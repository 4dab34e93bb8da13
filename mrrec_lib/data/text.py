"""Text helpers shared by the sources, the query builders and the leakage check.

Amazon review text carries HTML (`<br />`, `&#34;`); two copies of one review
must compare equal however they were escaped, so every comparison goes through
`normalise`, and "does review A appear inside text B" goes through `leak_key`.
"""

from __future__ import annotations

import hashlib
import html
import re

_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")
_NON_ALNUM = re.compile(r"[^0-9a-z]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u00a0": " "})


def clean_text(text: object) -> str:
    """Readable plain text: HTML entities decoded, tags become spaces, whitespace collapsed."""
    if text is None or (isinstance(text, float) and text != text):
        return ""
    if isinstance(text, list | tuple):
        text = " ".join(clean_text(t) for t in text)
    s = html.unescape(str(text)).translate(_QUOTES)
    s = _TAG.sub(" ", s)
    return _SPACE.sub(" ", s).strip()


def normalise(text: object) -> str:
    """Comparison form: lower-case alphanumeric words separated by single spaces."""
    return _NON_ALNUM.sub(" ", clean_text(text).lower()).strip()


def leak_key(text: object, min_words: int) -> str:
    """The first `min_words` normalised words, or the whole text when shorter.

    A review whose key appears inside another text is treated as copied into it.
    Short texts ("great product") are only compared for equality by callers,
    because a few generic words inside a longer text are not a copy.
    """
    words = normalise(text).split()
    return " ".join(words[:min_words])


def is_long(text: object, min_words: int) -> bool:
    return len(normalise(text).split()) >= min_words


def trim(text: str, max_chars: int) -> str:
    """Cut at a word boundary so a trimmed review still starts like the original (the leak check relies on it)."""
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    cut = text[:max_chars].rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:") + " ..."


def first_sentence(text: str) -> str:
    text = clean_text(text)
    return _SENTENCE_END.split(text, maxsplit=1)[0] if text else ""


def stable_id(*parts: object, prefix: str = "") -> str:
    """A short id that depends only on the normalised parts (same product -> same id across runs)."""
    key = "\x1f".join(normalise(p) for p in parts)
    return prefix + hashlib.sha1(key.encode()).hexdigest()[:12]


def parse_price(value: object) -> float:
    """Amazon prices come as numbers, "None", "$12.99" or ranges; anything unparsable is NaN."""
    if isinstance(value, int | float):
        return float(value)
    m = re.search(r"\d+(?:\.\d+)?", str(value or "").replace(",", ""))
    return float(m.group()) if m else float("nan")


def category_name(category: str) -> str:
    """Readable form of an Amazon 2023 file category: "Grocery_and_Gourmet_Food" -> "Grocery and Gourmet Food"."""
    return clean_text(str(category or "").replace("_", " "))


REVIEW_PREFIX = "Review: "  # marks a review snippet inside an item's text, one per line (the leak check reads it)


def compose_item_text(
    title: str,
    description: str = "",
    store: str = "",
    features: str = "",
    reviews: list[str] | tuple[str, ...] = (),
    review_chars: int = 300,
    max_chars: int = 1000,
    category: str = "",
) -> str:
    """What the item retriever embeds, in one format for every source and the distractors:
    "<title> (brand: <store>). Category: <category>. <description>", like Amazon-C4's `metadata`.

    Features stand in for a missing description; review snippets are appended
    only for items that have no metadata at all (the Beauty set), one per line.
    """
    head = clean_text(title)
    if store and normalise(store) not in normalise(head):
        head = f"{head} (brand: {clean_text(store)})" if head else f"Brand: {clean_text(store)}"
    cat = category_name(category)
    if cat:
        head = f"{head}. Category: {cat}" if head else f"Category: {cat}"
    body = clean_text(description) or clean_text(features)
    text = f"{head}. {body}".strip(". ") if body else head
    text = trim(text, max_chars)
    for r in reviews:
        snippet = trim(clean_text(r), review_chars)
        if not snippet:
            continue
        line = f"{REVIEW_PREFIX}{snippet}"
        if len(text) + len(line) + 1 > max_chars and text:
            break
        text = f"{text}\n{line}" if text else line
    return text


def review_snippets(item_text: str) -> list[str]:
    """The review snippets `compose_item_text` put into an item text."""
    return [ln[len(REVIEW_PREFIX) :] for ln in item_text.split("\n") if ln.startswith(REVIEW_PREFIX)]
