"""Prompts for the LLM memory builder (in the paper's spirit, our wording) and the checks on their replies.

Every `parse_*` returns None for a reply that cannot be used; the caller then
retries once and finally falls back to the extractive result, so a weak or
misbehaving model degrades memory quality but never stops the build.
"""

from __future__ import annotations

import re
from statistics import median
from typing import Any

from mrrec_lib.data.text import clean_text
from mrrec_lib.llm.base import Message
from mrrec_lib.memory.extractive import record_text, short
from mrrec_lib.memory.jsonio import parse_json_object
from mrrec_lib.memory.snapshots import Record
from mrrec_lib.memory.text import canonical_aspect, clean_llm_text, split_sentences

_GROUNDED = (
    "You maintain a shopper's preference memory for a recommendation assistant. "
    "State only what the given data supports: never invent brands, prices, products or facts."
)
_PLAIN = "Answer in plain sentences: no lists, no headings, no preamble."
MAX_COPIED = 0.5  # share of a summary's word 6-grams that may appear verbatim in its prompt
CATEGORY_KEY = "category_level_personalization_aspects"
SUBCATEGORY_KEY = "subcategory_level_personalization_aspects"


def pattern_messages(group: str, recs: list[Record], trim_chars: int, max_records: int = 0) -> list[Message]:
    """Step 2 of local memory: one category's purchases -> that category's preference pattern.

    Only the `max_records` most recent purchases are shown (0: all), so a long history fits a small context.
    """
    shown = recs[-max_records:] if max_records > 0 else recs
    lines = "\n".join(f"{i}. {record_text(r, trim_chars)}" for i, r in enumerate(shown, 1))
    omitted = f" ({len(recs) - len(shown)} earlier purchases not shown)" if len(shown) < len(recs) else ""
    return [
        {"role": "system", "content": _GROUNDED},
        {
            "role": "user",
            "content": (
                f"Category: {group}\nThe shopper's purchases in this category{omitted}, with their rating and review:\n"
                f"{lines}\n\nSummarise this shopper's preferences in {group} in 3 to 6 short sentences: favoured "
                f"brands, price range, styles, features, quality expectations and dislikes. {_PLAIN}"
            ),
        },
    ]


def profile_messages(patterns: dict[str, str]) -> list[Message]:
    """Step 3 of local memory: all category patterns -> one general user profile."""
    lines = "\n".join(f"[{g}] {t}" for g, t in patterns.items())
    return [
        {"role": "system", "content": _GROUNDED},
        {
            "role": "user",
            "content": (
                f"The shopper's preferences per category:\n{lines}\n\n"
                "Write this shopper's general profile in 4 to 7 short sentences: spending habits, brand inclination, "
                f"style, feature priorities, quality expectations and lifestyle hints. {_PLAIN}"
            ),
        },
    ]


def _item_line(item: dict[str, Any]) -> str:
    meta = [x for x in (item["store"], f"${item['price']:.2f}" if item["price"] else "", item["subcategory"]) if x]
    desc = short(item["description"], 200)
    return (
        f"{short(item['title'], 140) or 'untitled item'}"
        + (f" ({', '.join(meta)})" if meta else "")
        + (f": {desc}" if desc else "")
    )


def query_aspect_messages(
    category: str, query: str, purchase: dict[str, Any], negatives: list[dict[str, Any]]
) -> list[Message]:
    """Global step (A): why this purchase over its nearest alternatives, as personalization aspects."""
    alts = "\n".join(f"{i}. {_item_line(n)}" for i, n in enumerate(negatives, 1))
    schema = (
        f'{{"{CATEGORY_KEY}": [{{"category": "...", "aspect": "...", "description": "..."}}], '
        f'"{SUBCATEGORY_KEY}": [{{"subcategory": "...", "aspect": "...", "description": "..."}}]}}'
    )
    return [
        {
            "role": "system",
            "content": "You analyse shopping decisions to find what users personalise on. Reply with JSON only.",
        },
        {
            "role": "user",
            "content": (
                f"Scenario: {category}\nShopper's request: {query}\nChosen item: {_item_line(purchase)}\n"
                f"Similar items the shopper did NOT choose:\n{alts}\n\n"
                "List the personalization aspects behind this choice. Category-level aspects are general factors "
                "shoppers weigh in this scenario (budget, brand, aesthetics, usage context) and must not name "
                "specific products. Subcategory-level aspects are the specific factors that set the chosen item "
                f"apart from the alternatives. Return exactly this JSON shape:\n{schema}"
            ),
        },
    ]


def merge_messages(category: str, collected: dict[str, list[str]]) -> list[Message]:
    """Global step (B): many users' aspects for one category -> a de-duplicated aspect dictionary."""
    lines = "\n".join(f"- {a}: {d}" for a, descs in collected.items() for d in descs)
    return [
        {
            "role": "system",
            "content": "You consolidate personalization aspects into a clean taxonomy. Reply with JSON only.",
        },
        {
            "role": "user",
            "content": (
                f"Scenario: {category}\nAspects collected from many shoppers (aspect: description):\n{lines}\n\n"
                "Merge duplicate or near-duplicate aspects under one canonical Title Case name, de-duplicate the "
                "descriptions, and drop any specific product, brand or user detail. Return JSON only, shaped "
                '{"Aspect Name": ["description", ...], ...}'
            ),
        },
    ]


def _shingles(text: str, n: int = 6) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def _facts(text: str) -> set[str]:
    """Checkable facts of a summary: dollar amounts, numbers of 3+ digits, and capitalised words that do not
    start a sentence (brand and product names)."""
    out = {f"${float(m.replace(',', '')):g}" for m in re.findall(r"\$\s?(\d[\d,]*(?:\.\d+)?)", text)}
    out |= set(re.findall(r"(?<![\d.$])\d{3,}(?![\d.])", text))
    for sentence in split_sentences(text):
        out |= {w.lower() for w in re.findall(r"\b[A-Z][A-Za-z'&-]{2,}", sentence)[1:] if not w.isupper() or len(w) > 3}
    return out


def parse_summary(text: str, prompt: str = "") -> str | None:
    """A usable free-text summary, or None.

    Beyond form (long enough, mostly words, not bare headings), cheap faithfulness checks against the prompt: a reply that mostly
    copies the prompt verbatim is not a summary, and a price, a long number or a mid-sentence capitalised name
    absent from the prompt is an invented fact (small models do both).
    """
    t = clean_llm_text(text)
    if len(t) < 40 or sum(c.isalpha() for c in t) < 0.5 * len(t):
        return None
    fields = t.split(":")
    if len(fields) >= 4 and median(len(f.split()) for f in fields) < 4:
        return None  # a list of headings ("Spending habits: Brand inclination: ...") with nothing under them
    if prompt:
        shingles = _shingles(t)
        if shingles and len(shingles & _shingles(prompt)) > MAX_COPIED * len(shingles):
            return None
        lower, prices = prompt.lower(), {f for f in _facts(prompt) if f.startswith("$")}
        if not all(f in prices if f.startswith("$") else f in lower for f in _facts(t)):
            return None
    return t


def _aspect_list(value: Any, scope: str, default: str) -> list[dict[str, str]]:
    out = []
    for a in value if isinstance(value, list) else []:
        if not isinstance(a, dict):
            continue
        name, desc = canonical_aspect(a.get("aspect", "")), clean_text(a.get("description", ""))
        if name and desc:
            out.append({scope: clean_text(a.get(scope, "")) or default, "aspect": name, "description": desc})
    return out


def parse_query_aspects(text: str, category: str, subcategory: str) -> dict | None:
    """The step-(A) JSON with every aspect checked; None when no usable aspect is in the reply."""
    obj = parse_json_object(text)
    if obj is None:
        return None
    res = {
        CATEGORY_KEY: _aspect_list(obj.get(CATEGORY_KEY), "category", category),
        SUBCATEGORY_KEY: _aspect_list(obj.get(SUBCATEGORY_KEY), "subcategory", subcategory or category),
    }
    return res if res[CATEGORY_KEY] or res[SUBCATEGORY_KEY] else None


def parse_merged(text: str, max_descriptions: int) -> dict[str, list[str]] | None:
    """The step-(B) JSON as {Canonical Name: [descriptions]}; None when empty or not a mapping."""
    obj = parse_json_object(text)
    if obj is not None and len(obj) == 1 and isinstance(next(iter(obj.values())), dict):
        obj = next(iter(obj.values()))  # tolerate a wrapper such as {"aspects": {...}}
    if not obj:
        return None
    out: dict[str, list[str]] = {}
    for name, descs in obj.items():
        key = canonical_aspect(name)
        values = [descs] if isinstance(descs, str) else descs if isinstance(descs, list) else []
        for d in values:
            d = clean_text(d) if isinstance(d, str) else ""
            if key and d and d not in out.setdefault(key, []):
                out[key].append(d)
    out = {k: v[:max_descriptions] for k, v in out.items() if v}
    return out or None
