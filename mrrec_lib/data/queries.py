"""Writing the user's request from the target review, then MR.Rec's simplification.

Amazon-C4 asked ChatGPT to write a first-person request from a 5-star review;
MR.Rec then rewrote every request into one casual sentence with one core item
and one use case, without brand, specs, price or verbatim review text. Three
builders do the same here:
- `shared` (the default): the fixed C4-style requests of the shared data
  (`data/shared_requests.py` joins them to the targets first); `request` is the
  raw query, `simple_request` the simplified one.
- `extractive`: the product kind ("this <noun>" in the review, a review title
  that names it, else the top-level category) plus use-case phrases the review
  states ("for my ...", "to ...", "when I ..."), in a fixed first-person frame.
- `llm`: any chat backend (`mrrec_lib.llm.make_llm`) writes and simplifies;
  empty or garbled output falls back to `extractive` and is counted.
Sources that already have requests (Amazon-C4) are only simplified.

No builder sees the target item (title, brand, category path): like Amazon-C4's
writer, they get the review alone, `BUILDER_FIELDS` of each target.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from mrrec_lib.config import Config
from mrrec_lib.data.text import category_name, clean_text, first_sentence, normalise, trim

BUILDER_FIELDS = ("review_title", "review_text", "rating", "category")  # all a request writer may read
SHARED_COLUMNS = ("shared_request", "shared_simple_request")  # set by data.shared_requests.join_shared_requests

_STOP_NOUNS = {
    "product", "products", "item", "items", "one", "ones", "stuff", "thing", "things", "brand", "company",
    "seller", "purchase", "order", "price", "time", "is", "was", "are", "were", "has", "had", "will", "would",
    "does", "did", "can", "could", "and", "but", "so", "for", "to", "in", "on", "it", "that", "with", "year",
    "way", "review", "amazon", "purpose", "point", "morning", "week", "month", "day", "summer", "winter", "listing", "size", "color", "colour", "kind", "type", "set", "pack", "box",
    "quality", "value", "deal", "job", "idea", "choice", "condition", "service", "experience", "customer", "shape",
    "addition", "alternative", "may", "might", "must", "should", "shall", "as", "at", "of", "i", "we", "you",
    "buy", "fit", "find", "investment", "lot", "bit", "thanks",
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
_PRAISED_NOUN = re.compile(
    r"\b(?:great|nice|good|perfect|excellent|awesome|best|cute|lovely|beautiful|sturdy|amazing|wonderful|"
    r"fantastic|solid|handy|favorite|favourite|my new|love (?:my|the))\s+(?:(?:little|small|big|new|quality)\s+)?"
    r"([a-z][a-z'-]+)(?:\s+([a-z][a-z'-]+))?",
    re.IGNORECASE,
)
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
    "A customer bought a product from the category {category} and later wrote this review:\n"
    '"""{review_title}\n{review}"""\n\n'
    "Write the request this customer could have typed into a shopping assistant BEFORE buying: first person, "
    "one to three sentences, saying what kind of product they need and what they need it for. Do not name the "
    "brand and do not copy sentences from the review. Answer with the request only."
)
LLM_SIMPLIFY_PROMPT = (
    "Rewrite this shopping request as ONE short, casual sentence a real user would type. Keep only the core "
    "item and one use case. Leave out brands, technical specifications, prices and any wording copied from a "
    "review. Answer with the sentence only.\n\nRequest: {request}"
)


def _scrub(phrase: str) -> str:
    """Drop numbers/specs and prices; cut to a short phrase without a dangling stop word."""
    phrase = _PRICE.sub(" ", phrase)
    phrase = _DIGITS.sub(" ", phrase)
    words = phrase.split()[:_MAX_PHRASE_WORDS]
    while words and normalise(words[-1]) in _TRAILING_STOP | {""}:
        words.pop()
    return " ".join(words).strip(" -'\"")


_NOT_NOUN = {
    "smells", "smell", "works", "worked", "tastes", "taste", "looks", "look", "feels", "feel", "makes", "made",
    "came", "comes", "arrived", "lasts", "lasted", "fits", "fit", "keeps", "kept", "holds", "held", "helps", "helped",
    "gives", "gave", "goes", "went", "got", "gets", "really", "also", "just", "because", "since", "after", "before",
    "at", "from", "by", "every", "all", "again", "here", "there", "still", "even", "definitely", "only", "not",
    "too", "very", "much", "more", "most", "yet", "now", "last", "first", "have", "bought", "purchased", "ordered",
    "received", "around", "turn", "wife", "husband", "son", "daughter", "kid", "kids", "family", "mom", "dad",
    "friend", "friends", "mother", "father", "baby", "girl", "boy", "man", "woman", "people", "everyone",
}  # fmt: skip
_PRAISE = {
    "great", "good", "best", "love", "loved", "loves", "awesome", "excellent", "nice", "perfect", "amazing",
    "wonderful", "fantastic", "super", "favorite", "favourite", "new", "my", "our", "the", "a", "an", "this",
    "these", "five", "four", "stars", "star", "very", "so", "really", "quality", "value", "buy", "works", "work",
    "recommend", "recommended", "highly", "happy", "pleased", "exactly", "expected", "as", "described", "it",
    "wow", "yum", "yummy", "fine", "ok", "okay", "cool", "cute", "pretty", "beautiful", "lovely", "gift",
}  # fmt: skip
_TITLE_BREAK = {"for", "with", "to", "in", "on", "of", "but", "and", "or", "is", "was", "are", "not", "if", "i"}


def _review_nouns(texts: tuple[str, ...]) -> list[str]:
    """Product-kind nouns (one or two words): after "this/these/those", then after praise
    ("great journal", "nice little case"), each in order of appearance."""
    out = []
    for pattern in (_THIS_NOUN, _PRAISED_NOUN):
        out += _nouns_after(pattern, texts)
    return out


def _nouns_after(pattern: re.Pattern[str], texts: tuple[str, ...]) -> list[str]:
    out = []
    for text in texts:
        for m in pattern.finditer(clean_text(text)):
            first, second = m.group(1).lower(), (m.group(2) or "").lower()
            if first in _STOP_NOUNS | _NOT_NOUN or "'" in first:
                continue
            if (
                second
                and second not in _STOP_NOUNS | _TRAILING_STOP | _NOT_NOUN | _QUALITIES
                and "'" not in second
                and not second.endswith(("ly", "ed", "ing"))
            ):
                out.append(f"{first} {second}")
            else:
                out.append(first)
    return out


def title_kind(review_title: str) -> str:
    """The product kind a short review title names ("Great coffee maker!" -> "coffee maker"), else "".

    Only titles that are a bare noun phrase after dropping praise words count:
    "Great for dry skin" or "Works as described" name a use or a verdict, not a kind.
    """
    words = normalise(review_title).split()
    if not words or len(words) > 5 or any(w in _TITLE_BREAK for w in words):
        return ""
    rest = [w for w in words if w not in _PRAISE and w not in _QUALITIES and w.isalpha() and len(w) > 2]
    if not rest or any(w in _STOP_NOUNS | _NOT_NOUN for w in rest):
        return ""
    return " ".join(rest[-2:])


def core_noun(review: str, review_title: str, category: str) -> str:
    """The product kind a user would ask for, from the review alone; never empty.

    The noun the review title and text name most often after "this/these" or
    praise (ties: the earlier candidate; its first mention decides the wording);
    else a review title that is a bare noun phrase; else the top-level category
    ("grocery and gourmet food product").
    """
    candidates = _review_nouns((review_title, review))
    if candidates:
        heads = [c.split()[-1] for c in candidates]
        counts = Counter(heads)
        best = max(counts, key=lambda h: (counts[h], -heads.index(h)))
        return candidates[heads.index(best)]
    kind = title_kind(review_title)
    if kind:
        return kind
    cat = re.sub(r"^all\s+", "", category_name(category).lower())
    return f"{cat} product" if cat else "product"


def use_cases(review: str, limit: int = 2) -> list[str]:
    """Short use-case phrases the review states, in order of pattern preference."""
    found: list[str] = []
    text = clean_text(review)
    for pat in _USE_PATTERNS:
        for m in pat.finditer(text):
            phrase = _scrub(m.group(1)).lower()
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


def extractive_request(review: Mapping[str, Any]) -> tuple[str, str]:
    """(C4-style request, simplified one-sentence request) from the review alone.

    Reads only `BUILDER_FIELDS` (review title and text, rating, top-level
    category), never the target item: a request that quoted the title would make
    retrieval a title lookup.
    """
    text = str(review["review_text"] or "")
    noun = _scrub(core_noun(text, str(review["review_title"] or ""), str(review["category"] or ""))) or "product"
    uses = use_cases(text)
    good = aspects(text, float(review["rating"] or 0))
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


def review_views(targets: pd.DataFrame) -> list[dict[str, Any]]:
    """What a request writer may read of each target: `BUILDER_FIELDS`, nothing of the item."""
    missing = [c for c in BUILDER_FIELDS if c not in targets.columns]
    if missing:
        raise KeyError(f"targets lack column(s) {missing} that the request builders read")
    return targets[list(BUILDER_FIELDS)].to_dict("records")


def _shared_pairs(targets: pd.DataFrame) -> list[tuple[str, str]]:
    missing = [c for c in SHARED_COLUMNS if c not in targets.columns]
    if missing:
        raise KeyError(
            f"query_builder 'shared' needs column(s) {missing}: join the requests first "
            "(mrrec_lib.data.shared_requests.join_shared_requests)"
        )
    return list(zip(targets[SHARED_COLUMNS[0]].fillna(""), targets[SHARED_COLUMNS[1]].fillna(""), strict=True))


def build_queries(
    targets: pd.DataFrame, cfg: Config, llm_factory: Callable[[Config], Any] | None = None
) -> tuple[pd.DataFrame, Counter]:
    """Add `raw_query`, `query` and `query_builder` to the targets; count LLM fallbacks.

    A target with a request of its own source (Amazon-C4's `raw_query`) keeps it
    (builder "c4", rule-simplified); every other one gets `cfg.query_builder`'s.
    """
    counts: Counter = Counter()
    reviews = review_views(targets)
    own = [clean_text(q) for q in targets["raw_query"].fillna("")]
    shared = _shared_pairs(targets) if cfg.query_builder == "shared" and not all(own) else []
    raw, simple, builder = [], [], []
    for i, review in enumerate(reviews):
        if own[i]:
            r, s, b = own[i], simplify_rule(own[i]), "c4"
        elif shared:
            (r, s), b = (clean_text(x) for x in shared[i]), "shared"
            if not r or not s:
                raise ValueError(f"target {targets['qid'].iloc[i]!r} has an empty shared request")
        else:
            (r, s), b = extractive_request(review), "extractive"
        raw.append(r)
        simple.append(s if cfg.simplify_queries else r)
        builder.append(b)
    if cfg.query_builder == "llm" and reviews:
        if llm_factory is None:
            from mrrec_lib.llm import make_llm as llm_factory
        llm = llm_factory(cfg)
        need_raw = [i for i in range(len(reviews)) if not own[i]]
        prompts = [
            LLM_REQUEST_PROMPT.format(
                category=category_name(reviews[i]["category"]),
                review_title=clean_text(reviews[i]["review_title"]),
                review=trim(clean_text(reviews[i]["review_text"]), 4 * cfg.review_trim_chars),
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
            todo = [i for i in range(len(reviews)) if own[i] or i in raw_ok]
            prompts = [LLM_SIMPLIFY_PROMPT.format(request=raw[i]) for i in todo]
            for i, reply in zip(todo, _chat_all(llm, prompts, cfg, "simplifying requests"), strict=True):
                text = clean_llm_output(reply, max_words=40, avoid=reviews[i]["review_text"])
                if text is None:
                    counts["llm_simplify_fallback"] += 1
                    if i in raw_ok:  # keep the pair consistent: both from the extractive builder
                        raw[i], simple[i] = extractive_request(reviews[i])
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
