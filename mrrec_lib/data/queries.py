"""Writing the user's request from a held-out review, then MR.Rec's simplification.

Amazon-C4 asked ChatGPT to write a first-person request from a 5-star review;
MR.Rec then rewrote every request into one casual sentence with one core item
and one use case, without brand, specs, price or verbatim review text. Two
builders do the same here:
- `extractive` (the offline default): the product kind (leaf category, title
  head or "this <noun>" in the review) plus use-case phrases the review states
  ("for my ...", "to ...", "when I ..."), in a fixed first-person frame. A
  135M model writes worse requests than this.
- `llm`: any chat backend (`mrrec_lib.llm.make_llm`) writes and simplifies;
  empty or garbled output falls back to `extractive` and is counted.
Sources that already have requests (Amazon-C4) are only simplified.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from mrrec_lib.config import Config
from mrrec_lib.data.text import clean_text, first_sentence, normalise, trim

_STOP_NOUNS = {
    "product", "products", "item", "items", "one", "ones", "stuff", "thing", "things", "brand", "company",
    "seller", "purchase", "order", "price", "time", "is", "was", "are", "were", "has", "had", "will", "would",
    "does", "did", "can", "could", "and", "but", "so", "for", "to", "in", "on", "it", "that", "with", "year",
    "way", "review", "amazon", "purpose", "point", "morning", "week", "month", "day", "summer", "winter", "listing", "size", "color", "colour", "kind", "type", "set", "pack", "box",
}  # fmt: skip
_TRAILING_STOP = {
    "and", "or", "but", "the", "a", "an", "to", "of", "with", "that", "which", "so", "it", "is", "in", "my",
    "for", "on", "at", "as", "are", "was", "be", "this", "these", "i", "very", "really", "just", "when", "if",
}  # fmt: skip
_QUALITIES = {
    "soft", "smooth", "fresh", "lightweight", "light", "gentle", "sweet", "spicy", "strong", "mild", "moisturizing",
    "hydrating", "durable", "sturdy", "comfortable", "fragrant", "pigmented", "crunchy", "creamy", "rich",
    "flavorful", "delicious", "tasty", "healthy", "natural", "organic", "thick", "compact", "portable", "cute",
    "pretty", "elegant", "refreshing", "bold", "subtle", "quiet", "fluffy", "shiny", "matte", "waterproof",
    "long-lasting", "nourishing", "soothing", "chewy", "crispy", "savory", "tangy", "fruity",
    "silky", "warm", "cozy", "simple", "convenient", "affordable", "versatile", "bright",
    "vibrant", "natural-looking", "non-greasy", "unscented", "sugar-free", "caffeine-free", "gluten-free", "vegan",
}  # fmt: skip
_THIS_NOUN = re.compile(r"\b(?:this|these|those)\s+([a-z][a-z'-]+)(?:\s+([a-z][a-z'-]+))?", re.IGNORECASE)
_END = r"(?=[.,;:!?()\n]|\s(?:but|because|which|although|though|since|and it|and they|and i|so|as it|if|i)\b|$)"
_USE_VERBS = (
    "use|wash|clean|remove|keep|make|help|hold|store|organize|protect|cover|apply|moisturize|treat|style|curl|"
    "straighten|dry|cook|bake|mix|add|drink|snack|share|give|gift|sweeten|flavor|season|brew|start|relax|sleep|"
    "travel|carry|replace|fix|prevent|reduce|soothe|soften|hydrate|exfoliate|repair|grow|cut|trim|shave|paint|"
    "decorate|fill|pack|serve|enjoy|wear|match|hide|tame|smooth|detangle|calm|boost|lose|stay|stop|avoid"
)
_USE_PATTERNS = (
    re.compile(
        r"\b(?:perfect|great|ideal|good|nice|excellent|works?|worked|used?|using|bought (?:it|them|this|these))\s+"
        r"(?:(?:it|them|this|these)\s+)?(for (?!me\b|the price\b|the money\b|a while\b|years\b|now\b|sure\b|this\b|that\b|it\b)"
        r"[a-z][^.,;:!?()\n]{2,60}?)" + _END,
        re.IGNORECASE,
    ),
    re.compile(
        r"\b(for (?:my|our|his|her|their|everyday|daily|travel|work|kids|gifts?|the (?:kids|family|office|gym|"
        r"winter|summer|holidays))\b[^.,;:!?()\n]{2,60}?)" + _END,
        re.IGNORECASE,
    ),
    re.compile(
        r"\b(?:use|used|using|put)\s+(?:it\s+|them\s+|this\s+|these\s+)?((?:in|on|with|as) (?:my|our|a|an|the)\b"
        r"[^.,;:!?()\n]{2,60}?)" + _END,
        re.IGNORECASE,
    ),
    re.compile(r"\b(so (?:i|we) can\b[^.,;:!?()\n]{3,60}?)" + _END, re.IGNORECASE),
    re.compile(rf"\b(to (?:{_USE_VERBS})\b[^.,;:!?()\n]{{0,50}}?)" + _END, re.IGNORECASE),
)
_BAD_PHRASE = re.compile(r"n't\b|\b(?:not|never|no|received|package|return|refund|seller|review|you|me|info)\b")
_NEGATION = re.compile(r"\b(?:not|no|never|isn't|wasn't|don't|doesn't|didn't|too|less)\s+(?:\w+\s+)?$", re.I)
_OFF_TASK = re.compile(
    r"\b(?:sorry|as an ai|happy to help|glad to help|can you (?:please )?provide|please provide|i cannot|i can't|"
    r"here is|here's|rewritten|the customer|this customer|the review)\b",
    re.IGNORECASE,
)
_VERBATIM_WORDS = 6
_DIGITS = re.compile(r"\S*\d\S*")
_PRICE = re.compile(r"\$\s*\S+")
_MAX_PHRASE_WORDS = 9

LLM_REQUEST_PROMPT = (
    "A customer bought a product from the category {category}{sub} and later wrote this review:\n"
    '"""{review}"""\n\n'
    "Write the request this customer could have typed into a shopping assistant BEFORE buying: first person, "
    "one to three sentences, saying what kind of product they need and what they need it for. Do not name the "
    "brand and do not copy sentences from the review. Answer with the request only."
)
LLM_SIMPLIFY_PROMPT = (
    "Rewrite this shopping request as ONE short, casual sentence a real user would type. Keep only the core "
    "item and one use case. Leave out brands, technical specifications, prices and any wording copied from a "
    "review. Answer with the sentence only.\n\nRequest: {request}"
)


def _scrub(phrase: str, brand_words: set[str]) -> str:
    """Drop brand words, numbers/specs and prices; cut to a short phrase without a dangling stop word."""
    phrase = _PRICE.sub(" ", phrase)
    phrase = _DIGITS.sub(" ", phrase)
    words = [w for w in phrase.split() if normalise(w) not in brand_words]
    words = words[:_MAX_PHRASE_WORDS]
    while words and normalise(words[-1]) in _TRAILING_STOP | {""}:
        words.pop()
    return " ".join(words).strip(" -'\"")


_FUNCTION_WORDS = {"when", "they", "them", "their", "you", "your", "we", "our", "he", "she", "his", "her", "from", "up"}
_TITLE_HEAD = re.compile(r"\s*(?:[,(\[|:]| - | for | with | by )", re.IGNORECASE)
_UNITS = {
    "oz", "ounce", "ounces", "fl", "ml", "l", "g", "gram", "grams", "lb", "lbs", "kg", "count", "ct", "pack", "packs",
    "pcs", "pc", "piece", "pieces", "inch", "inches", "in", "mm", "cm", "x", "of", "and", "the", "a", "new", "net", "wt",
}  # fmt: skip


def title_noun(title: str) -> str:
    """The product kind from a title: the last two words of its head, without units and numbers."""
    head = _TITLE_HEAD.split(clean_text(title), maxsplit=1)[0]
    words = [w.lower() for w in re.findall(r"[A-Za-z][A-Za-z']*", head)]
    words = [w for w in words if w not in _UNITS and w not in _TRAILING_STOP and w not in _FUNCTION_WORDS]
    return " ".join(words[-2:])


def _review_nouns(texts: tuple[str, ...]) -> list[str]:
    out = []
    for text in texts:
        for m in _THIS_NOUN.finditer(clean_text(text)):
            first, second = m.group(1).lower(), (m.group(2) or "").lower()
            if first in _STOP_NOUNS or "'" in first:
                continue
            if (
                second
                and second not in _STOP_NOUNS | _TRAILING_STOP
                and "'" not in second
                and not second.endswith("ly")
            ):
                out.append(f"{first} {second}")
            else:
                out.append(first)
    return out


def core_noun(kind: str, title: str, review: str, review_title: str, category: str) -> str:
    """The product kind a user would ask for; never empty.

    A category kind wins; else a "this <noun>" of the review that the title
    confirms; else the title's head; else the review's noun; else the category.
    """
    if kind.strip():
        return clean_text(kind).lower()
    candidates = _review_nouns((review_title, review))
    title_words = set(normalise(title).split())
    for cand in candidates:
        words = cand.split()
        if title_words and words[-1] in title_words:
            return words[-1] if words[0] not in title_words else cand
    if title.strip():
        head = title_noun(title)
        if head:
            return head
    if candidates:
        return candidates[0]
    cat = re.sub(r"^all\s+", "", clean_text(category).lower().replace("_", " "))
    return f"{cat} product" if cat else "product"


def use_cases(review: str, brand_words: set[str], limit: int = 2) -> list[str]:
    """Short use-case phrases the review states, in order of pattern preference."""
    found: list[str] = []
    text = clean_text(review)
    for pat in _USE_PATTERNS:
        for m in pat.finditer(text):
            phrase = _scrub(m.group(1), brand_words).lower()
            if phrase.split(" ", 1)[0] in ("in", "on", "with", "as"):
                phrase = f"to use {phrase}"
            if len(phrase.split()) >= 3 and phrase not in found and not _BAD_PHRASE.search(phrase):
                found.append(phrase)
            if len(found) >= limit:
                return found
    return found


def aspects(review: str, rating: float, limit: int = 2) -> list[str]:
    """Qualities the reviewer praised (a fixed lexicon, negated mentions skipped); none for unhappy reviews."""
    if rating < 3:
        return []
    text = clean_text(review).lower()
    out: list[str] = []
    for m in re.finditer(r"[a-z][a-z-]+", text):
        word = m.group()
        if word in _QUALITIES and word not in out and not _NEGATION.search(text[max(0, m.start() - 25) : m.start()]):
            out.append(word)
    return out[:limit]


def _article(noun: str) -> str:
    if noun.endswith("s") and not noun.endswith("ss"):
        return noun
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def brand_words_of(store: str, keep: str = "") -> set[str]:
    """Words of the brand to drop from a request, except those that name the product kind ("The Tao of Tea")."""
    generic = _TRAILING_STOP | {"company", "inc", "llc", "ltd", "store", "shop", "official"}
    return {w for w in normalise(store).split() if len(w) > 2 and w not in generic} - set(normalise(keep).split())


def extractive_request(target: dict[str, Any]) -> tuple[str, str]:
    """(C4-style request, simplified one-sentence request) from the target review alone."""
    brands = brand_words_of(target.get("store", ""), keep=target.get("noun_hint", ""))
    noun = _scrub(
        core_noun(target.get("noun_hint", ""), target.get("item_title", ""), target["review_text"],
                  target.get("review_title", ""), target.get("category", "")),
        brands,
    ) or "product"  # fmt: skip
    uses = use_cases(target["review_text"], brands)
    good = aspects(target["review_text"], float(target.get("rating") or 0))
    thing = _article(noun)
    raw = f"I'm looking for {thing} {uses[0]}." if uses else f"I'm looking for {thing}."
    if good:
        raw += f" Ideally it should be {' and '.join(good)}."
    if len(uses) > 1:
        raw += f" I'd also like to use it {uses[1]}."
    if uses:
        simple = f"I need {thing} {uses[0]}."
    elif good:
        simple = f"I need {thing} that {'are' if thing == noun and noun.endswith('s') else 'is'} {good[0]}."
    else:
        simple = f"I need {thing}."
    return raw, simple


def simplify_rule(request: str) -> str:
    """Light rule-based simplification of an existing request: its first sentence, prices removed."""
    sentence = first_sentence(_PRICE.sub("", request))
    return sentence or clean_text(request)


def clean_llm_output(text: str | None, max_words: int, avoid: str = "") -> str | None:
    """The first usable line of a completion, or None when the output is empty, garbled, off-task
    (refusals, assistant talk) or copies `_VERBATIM_WORDS` consecutive words of `avoid` (the review)."""
    if not text:
        return None
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    if not lines:
        return None
    line = re.sub(r"^(?:request|sentence|answer|query|rewritten request)\s*:\s*", "", lines[0], flags=re.I)
    line = line.strip().strip("\"“”'").strip()
    words = line.split()
    letters = sum(ch.isalpha() for ch in line)
    if len(words) < 3 or len(words) > max_words or letters < 0.6 * len(line):
        return None
    if any(tok in line for tok in ("<|", "|>", "```", "{", "}")) or _OFF_TASK.search(line):
        return None
    if avoid and _shares_words(line, avoid, _VERBATIM_WORDS):
        return None
    return line


def _shares_words(text: str, source: str, k: int) -> bool:
    """True when `text` repeats `k` consecutive words of `source` (verbatim review text)."""
    a, b = normalise(text).split(), f" {normalise(source)} "
    return any(f" {' '.join(a[i : i + k])} " in b for i in range(max(0, len(a) - k + 1)))


def _chat_all(llm: Any, prompts: list[str], cfg: Config, desc: str) -> list[str | None]:
    from mrrec_lib.llm.base import Sampling

    sampling = Sampling(temperature=cfg.llm_temperature, max_new_tokens=cfg.llm_max_new_tokens, seed=cfg.seed)
    out: list[str | None] = []
    size = max(1, cfg.llm_batch_size)
    for start in tqdm(range(0, len(prompts), size), desc=desc, disable=len(prompts) <= size):
        batch = [[{"role": "user", "content": p}] for p in prompts[start : start + size]]
        try:
            replies = llm.chat(batch, sampling, n=1)
        except Exception as e:  # a backend failure costs this batch its LLM queries, not the stage
            print(f"{desc}: LLM batch failed ({type(e).__name__}: {e}); using the extractive builder")
            replies = [[] for _ in batch]
        out += [r[0] if r else None for r in replies]
    return out


def build_queries(
    targets: pd.DataFrame, cfg: Config, llm_factory: Callable[[Config], Any] | None = None
) -> tuple[pd.DataFrame, Counter]:
    """Add `raw_query`, `query` and `query_builder` to the targets; count LLM fallbacks."""
    counts: Counter = Counter()
    rows = targets.to_dict("records")
    raw, simple, builder = [], [], []
    for t in rows:
        if t["raw_query"]:
            raw.append(clean_text(t["raw_query"]))
            simple.append(simplify_rule(t["raw_query"]) if cfg.simplify_queries else clean_text(t["raw_query"]))
            builder.append("c4")
        else:
            r, s = extractive_request(t)
            raw.append(r)
            simple.append(s if cfg.simplify_queries else r)
            builder.append("extractive")
    if cfg.query_builder == "llm" and rows:
        if llm_factory is None:
            from mrrec_lib.llm import make_llm as llm_factory
        llm = llm_factory(cfg)
        need_raw = [i for i, t in enumerate(rows) if not t["raw_query"]]
        prompts = [
            LLM_REQUEST_PROMPT.format(
                category=rows[i]["category"],
                sub=f" / {rows[i]['subcategory']}" if rows[i]["subcategory"] else "",
                review=trim(rows[i]["review_text"], 4 * cfg.review_trim_chars),
            )
            for i in need_raw
        ]
        raw_ok = set()
        for i, reply in zip(need_raw, _chat_all(llm, prompts, cfg, "writing requests"), strict=True):
            text = clean_llm_output(reply, max_words=80)
            if text is None:
                counts["llm_request_fallback"] += 1
            else:
                raw[i] = text
                raw_ok.add(i)
        if cfg.simplify_queries:
            todo = [i for i, t in enumerate(rows) if t["raw_query"] or i in raw_ok]
            prompts = [LLM_SIMPLIFY_PROMPT.format(request=raw[i]) for i in todo]
            for i, reply in zip(todo, _chat_all(llm, prompts, cfg, "simplifying requests"), strict=True):
                text = clean_llm_output(reply, max_words=40, avoid=rows[i]["review_text"])
                if text is None:
                    counts["llm_simplify_fallback"] += 1
                    if i in raw_ok:  # keep the pair consistent: both from the extractive builder
                        raw[i], simple[i] = extractive_request(rows[i])
                    continue
                simple[i] = text
                builder[i] = "llm"
        else:
            for i in raw_ok:
                simple[i] = raw[i]
                builder[i] = "llm"
    out = targets.copy()
    out["raw_query"], out["query"], out["query_builder"] = raw, simple, builder
    return out, counts
