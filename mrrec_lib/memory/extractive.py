"""The no-LLM memory builder: every statement is computed from the data, so nothing is invented.

Local memory: per category group, brands (with repeat counts), price range
relative to the group's typical price, rating habits, attribute words found in
the chosen items (flavour, form, size, diet), item keywords and review themes
weighted by TF-IDF, and the most salient sentence of a liked and a disliked
review; the profile aggregates the same signals over the whole history.

Global memory: for a purchase and its nearest same-category alternatives, the
attributes that set the purchase apart (brand, price band, lexicon attributes
present in the purchase but not in most alternatives) become named aspects with
generic descriptions; merging by canonical name then counts how often each
description recurs, which is what ranks them.
"""

from __future__ import annotations

import re
from collections import Counter
from statistics import mean, median
from typing import Any

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, TfidfVectorizer

from mrrec_lib.data.text import clean_text, trim
from mrrec_lib.memory.snapshots import Record
from mrrec_lib.memory.text import canonical_aspect, split_sentences


def _terms(text: str) -> list[str]:
    return [t.strip() for t in text.split("|") if t.strip()]


LEXICON: dict[str, list[str]] = {
    "Flavor And Scent": _terms(
        "chocolate|dark chocolate|vanilla|caramel|mint|peppermint|strawberry|lemon|lime|orange|berry|cherry|"
        "coconut|cinnamon|ginger|honey|maple|peach|apple|mango|raspberry|blueberry|hazelnut|almond|peanut butter|"
        "espresso|mocha|matcha|green tea|black tea|chai|spicy|bbq|garlic|cheddar|sea salt|smoky|pumpkin|unflavored|"
        "unscented|lavender|rose|citrus|floral|eucalyptus|sandalwood|jasmine|tea tree|fragrance|scented|"
        "dark roast|medium roast|light roast"
    ),
    "Item Form": _terms(
        "powder|liquid|bar|bars|capsule|capsules|tablet|tablets|gummies|cream|gel|spray|stick|lotion|serum|oil|"
        "pods|k cup|k cups|whole bean|ground|instant|concentrate|syrup|mix|chips|bites|flakes|loose leaf|tea bags|"
        "sachets|balm|mask|wipes|foam|paste|drops|jar|can|cans|bottle|bottles|pouch|pouches"
    ),
    "Size And Quantity": _terms(
        "multipack|variety pack|value pack|family size|bulk|travel size|mini|jumbo|single serve|sample|refill"
    ),
    "Ingredients And Diet": _terms(
        "organic|natural|all natural|gluten free|sugar free|no sugar added|unsweetened|keto|vegan|plant based|"
        "non gmo|kosher|dairy free|low carb|low sodium|low fat|caffeine free|decaf|caffeinated|whole grain|"
        "high protein|protein|paraben free|sulfate free|cruelty free|hypoallergenic|alcohol free|fragrance free|"
        "spf|zero calorie"
    ),
    "Usage Context": _terms(
        "gift|gifts|travel|kids|children|baby|office|party|holiday|christmas|birthday|wedding|camping|gym|"
        "workout|breakfast|snack|lunch|family|daily|everyday|sensitive skin|dry skin|oily skin|husband|wife|"
        "daughter|son|dog|cat"
    ),
}
ATTRIBUTE_ASPECTS = ("Flavor And Scent", "Item Form", "Size And Quantity", "Ingredients And Diet")
# Sizes are only informative with their number ("20 count", "pack of 6"), so they get a pattern, not words.
_SIZE = r"pack of \d+|\d+(?:\.\d+)? ?(?:fl oz|oz|ounces?|lbs?|pounds?|ml|grams?|g|kg|count|ct|pack|pk|pieces|pcs)"
_PATTERNS = {
    aspect: re.compile(
        r"\b("
        + (_SIZE + "|" if aspect == "Size And Quantity" else "")
        + "|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True))
        + r")\b"
    )
    for aspect, terms in LEXICON.items()
}
_DOMAIN_STOP = {
    "product",
    "products",
    "item",
    "items",
    "great",
    "good",
    "love",
    "loved",
    "like",
    "liked",
    "really",
    "just",
    "buy",
    "bought",
    "amazon",
    "use",
    "used",
    "using",
    "would",
    "one",
    "get",
    "got",
    "well",
    "also",
    "much",
    "even",
    "time",
    "will",
    "better",
    "best",
    "nice",
    "order",
    "ordered",
    "stars",
    "star",
    "recommend",
    "definitely",
    "little",
    "bit",
    "thing",
    "things",
    "way",
    "make",
    "makes",
    "made",
    "try",
    "tried",
    "review",
    "pretty",
    "lot",
}
STOP_WORDS = sorted(ENGLISH_STOP_WORDS | _DOMAIN_STOP)


def _norm(text: str) -> str:
    return re.sub(r"[-_/]+", " ", clean_text(text).lower())


def lexicon_hits(text: str, aspects: tuple[str, ...] | None = None) -> dict[str, list[str]]:
    """Lexicon terms found in `text`, per aspect, in order of first occurrence."""
    t = _norm(text)
    out: dict[str, list[str]] = {}
    for aspect in aspects or tuple(LEXICON):
        found = list(dict.fromkeys(m.group(1) for m in _PATTERNS[aspect].finditer(t)))
        if found:
            out[aspect] = found
    return out


def short(text: str, n: int = 70) -> str:
    return trim(clean_text(text), n)


def money(x: float) -> str:
    return f"${x:,.2f}"


class TermScorer:
    """TF-IDF weights fitted once on a corpus, to pick the words that characterise a small text."""

    def __init__(self, corpus: list[str]):
        docs = [d for d in corpus if d]
        big = len(docs) >= 20
        self.vec = TfidfVectorizer(
            stop_words=STOP_WORDS,
            ngram_range=(1, 2),
            min_df=2 if big else 1,
            max_df=0.5 if big else 1.0,
            token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z']{2,}\b",
            sublinear_tf=True,
        )
        self.fitted = bool(docs)
        if self.fitted:
            try:
                self.vec.fit(docs)
            except ValueError:  # only stop words in the corpus
                self.fitted = False
        self.terms = self.vec.get_feature_names_out() if self.fitted else np.array([])

    def top_terms(self, text: str, n: int, exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
        if not self.fitted or not text:
            return []
        row = self.vec.transform([text]).tocoo()
        picked: list[str] = []
        covered: set[str] = set()
        plain = " ".join(re.findall(r"[a-z']+", text.lower()))
        for j in row.col[np.argsort(-row.data, kind="stable")]:
            term = str(self.terms[j])
            words = set(term.split())
            # sklearn forms bigrams after dropping stop words; keep only those the text really contains
            if words & exclude or words <= covered or (len(words) > 1 and term not in plain):
                continue
            picked.append(term)
            covered |= words
            if len(picked) == n:
                break
        return picked

    def salient_sentence(self, text: str, max_chars: int = 100) -> str:
        """The review sentence with the most distinctive vocabulary (readable evidence, not a summary)."""
        sents = [s for s in split_sentences(clean_text(text)) if 20 <= len(s) <= 400]
        if not sents or not self.fitted:
            return short(sents[0], max_chars) if sents else ""
        scores = np.asarray(self.vec.transform(sents).sum(axis=1)).ravel()
        return short(sents[int(np.argmax(scores))], max_chars)


def record_text(r: Record, trim_chars: int) -> str:
    """A behaviour record: what was bought, its metadata, the rating and the (trimmed) review."""
    meta = [x for x in (r["store"], money(r["price"]) if r["price"] else "", r["group"]) if x]
    what = short(r["title"], 120) if r["title"] else "an item with unknown title"
    parts = [f"Bought {what}" + (f" ({', '.join(meta)})" if meta else "") + "."]
    if r["rating"] is not None:
        parts.append(f"Rated {r['rating']:g}/5.")
    review = trim(clean_text(r["review_text"]), trim_chars)
    if r["review_title"] or review:
        parts.append(f'Review "{short(r["review_title"], 80)}": {review}'.rstrip(": "))
    return " ".join(parts)


def _brand_words(recs: list[Record]) -> set[str]:
    return {w for r in recs for w in _norm(r["store"]).split()}


class ExtractiveLocal:
    """Preference patterns and profiles from one snapshot's records, with corpus statistics fitted once."""

    def __init__(self, histories: dict[str, list[Record]]):
        all_recs = [r for recs in histories.values() for r in recs]
        unique_items = {r["item_id"]: r for r in all_recs}.values()
        self.item_terms = TermScorer([f"{r['title']} {r['description']}" for r in unique_items])
        self.review_terms = TermScorer([f"{r['review_title']} {r['review_text']}" for r in all_recs])
        prices: dict[str, list[float]] = {}
        for r in unique_items:
            if r["price"]:
                prices.setdefault(r["group"], []).append(r["price"])
        self.group_price = {g: median(p) for g, p in prices.items() if len(p) >= 3}

    def _price_ratio(self, r: Record) -> float | None:
        ref = self.group_price.get(r["group"])
        return r["price"] / ref if r["price"] and ref else None

    @staticmethod
    def _band(ratio: float) -> str:
        return "below" if ratio < 0.8 else "above" if ratio > 1.25 else "around"

    def pattern(self, group: str, recs: list[Record]) -> str:
        n = len(recs)
        titles = list(dict.fromkeys(short(r["title"], 60) for r in recs if r["title"]))[:3]
        s = [
            f"In {group}, {n} purchase{'s' if n > 1 else ''}"
            + (f", including {'; '.join(titles)}" if titles else "")
            + "."
        ]
        brands = Counter(r["store"] for r in recs if r["store"])
        if brands:
            repeat = [f"{b} ({c} purchases)" for b, c in brands.most_common(3) if c > 1]
            if repeat:
                s.append(f"Favoured {group} brands: {', '.join(repeat)}.")
            else:
                s.append(f"{group} brands bought: {', '.join(b for b, _ in brands.most_common(4))}; none repeated.")
        prices = [r["price"] for r in recs if r["price"]]
        if prices:
            med = median(prices)
            ref = self.group_price.get(group)
            rel = f", {self._band(med / ref)} the typical {group} price of {money(ref)}" if ref else ""
            span = money(min(prices)) if len(prices) == 1 else f"{money(min(prices))} to {money(max(prices))}"
            s.append(f"Pays {span} for {group} items (median {money(med)}{rel}).")
        ratings = [r["rating"] for r in recs if r["rating"] is not None]
        if ratings:
            fives = sum(x >= 5 for x in ratings)
            s.append(f"Rates {group} items {mean(ratings):.1f}/5 on average ({fives} of {len(ratings)} five-star).")
        item_text = " ".join(f"{r['title']} {r['description']}" for r in recs)
        for aspect, terms in lexicon_hits(item_text, ATTRIBUTE_ASPECTS).items():
            s.append(f"{aspect} of chosen {group} items: {', '.join(terms[:5])}.")
        keywords = self.item_terms.top_terms(item_text, 5, exclude=_brand_words(recs))
        if keywords:
            s.append(f"Keywords of chosen {group} items: {', '.join(keywords)}.")
        liked = sorted((r for r in recs if (r["rating"] or 0) >= 4), key=lambda r: -(r["rating"] or 0))
        disliked = [r for r in recs if r["rating"] is not None and r["rating"] <= 2]
        praise = self.review_terms.top_terms(" ".join(f"{r['review_title']} {r['review_text']}" for r in liked), 5)
        if praise:
            s.append(f"Praises in {group} reviews: {', '.join(praise)}.")
        quote = next((q for r in liked if (q := self.review_terms.salient_sentence(r["review_text"]))), "")
        if quote:
            s.append(f'Liked in {group}: "{quote}"')
        for r in disliked[:2]:
            why = self.review_terms.salient_sentence(r["review_text"]) or short(r["review_title"], 80)
            what = short(r["title"], 60) or "an item"
            s.append(f"Disliked in {group}: {what}, rated {r['rating']:g}/5" + (f': "{why}"' if why else "."))
        return " ".join(s)

    def profile(self, recs: list[Record]) -> str:
        n = len(recs)
        groups = Counter(r["group"] for r in recs)
        top = ", ".join(f"{g} ({c})" for g, c in groups.most_common(4))
        s = [
            f"Shopping history of {n} purchases across {len(groups)} categor{'ies' if len(groups) > 1 else 'y'}, mostly {top}."
        ]
        ratios = [x for r in recs if (x := self._price_ratio(r)) is not None]
        prices = [r["price"] for r in recs if r["price"]]
        if prices:
            line = f"Spending habits: median {money(median(prices))} per item"
            if ratios:
                rel = median(ratios)
                label = "budget-leaning" if rel < 0.8 else "premium-leaning" if rel > 1.25 else "mid-range"
                line += f", {rel:.1f}x the typical price of the same category ({label})"
            s.append(line + ".")
        brands = Counter(r["store"] for r in recs if r["store"])
        if brands:
            repeat = {b: c for b, c in brands.items() if c > 1}
            if repeat:
                share = sum(repeat.values()) / sum(brands.values())
                favs = ", ".join(b for b, _ in Counter(repeat).most_common(3))
                s.append(f"Brand inclination: {share:.0%} of purchases from brands bought more than once ({favs}).")
            else:
                s.append("Brand inclination: explores brands; no brand bought twice.")
        ratings = [r["rating"] for r in recs if r["rating"] is not None]
        if ratings:
            avg = mean(ratings)
            kind = "generous" if avg >= 4.3 else "critical" if avg <= 3.3 else "balanced"
            low = sum(x <= 2 for x in ratings)
            s.append(f"Rating habits: {kind} rater, average {avg:.1f}/5, {low} of {len(ratings)} rated 2 or lower.")
        attrs = lexicon_hits(" ".join(f"{r['title']} {r['description']}" for r in recs), ATTRIBUTE_ASPECTS)
        if attrs:
            s.append(
                "Feature priorities: " + "; ".join(f"{a.lower()} {', '.join(t[:4])}" for a, t in attrs.items()) + "."
            )
        liked = " ".join(f"{r['review_title']} {r['review_text']}" for r in recs if (r["rating"] or 0) >= 4)
        disliked = " ".join(
            f"{r['review_title']} {r['review_text']}" for r in recs if r["rating"] is not None and r["rating"] <= 2
        )
        if terms := self.review_terms.top_terms(liked, 6):
            s.append(f"Quality expectations (praised in reviews): {', '.join(terms)}.")
        if terms := self.review_terms.top_terms(disliked, 5):
            s.append(f"Dislikes (from low-rated reviews): {', '.join(terms)}.")
        context = lexicon_hits(
            " ".join(f"{r['title']} {r['review_title']} {r['review_text']}" for r in recs), ("Usage Context",)
        )
        if context:
            s.append(f"Lifestyle hints from purchases and reviews: {', '.join(context['Usage Context'][:6])}.")
        return " ".join(s)


def item_dict(row: dict[str, Any]) -> dict[str, Any]:
    price = row.get("price")
    return {
        "item_id": str(row.get("item_id", "")),
        "title": clean_text(row.get("title")),
        "store": clean_text(row.get("store")),
        "price": None if price is None or pd.isna(price) else round(float(price), 2),
        "description": clean_text(row.get("description")),
        "subcategory": clean_text(row.get("subcategory")),
        "category": clean_text(row.get("category")),
    }


class ExtractiveGlobal:
    """Discriminative attributes of a purchase against its nearest unchosen alternatives."""

    def __init__(self, items: pd.DataFrame):
        self.price_cuts: dict[str, tuple[float, float]] = {}
        for cat, prices in items.groupby("category")["price"]:
            known = pd.to_numeric(prices, errors="coerce").dropna()
            if len(known) >= 3:
                lo, hi = np.quantile(known, [1 / 3, 2 / 3])
                self.price_cuts[str(cat)] = (float(lo), float(hi))

    def _band(self, category: str, price: float | None) -> str | None:
        cuts = self.price_cuts.get(category)
        if price is None or cuts is None:
            return None
        return "budget" if price <= cuts[0] else "premium" if price > cuts[1] else "mid-range"

    def query_aspects(
        self, category: str, query: str, purchase: dict[str, Any], negatives: list[dict[str, Any]]
    ) -> dict:
        """The paper's step-(A) JSON, computed instead of generated."""
        cat_level: list[dict[str, str]] = []
        sub_level: list[dict[str, str]] = []

        def add_cat(aspect: str, description: str) -> None:
            cat_level.append({"category": category, "aspect": aspect, "description": description})

        neg_brands = {n["store"] for n in negatives if n["store"]}
        if purchase["store"] and neg_brands:
            if purchase["store"] in neg_brands:
                add_cat("Brand Preference", "Shoppers often stay with a brand and choose among its own variants.")
            else:
                add_cat(
                    "Brand Preference", "Shoppers often pick a particular brand over similar items from other brands."
                )
        neg_prices = [n["price"] for n in negatives if n["price"]]
        if purchase["price"] and neg_prices:
            rel = purchase["price"] / median(neg_prices)
            if rel < 0.85:
                add_cat("Price And Budget", "Shoppers often choose a cheaper option than comparable items.")
            elif rel > 1.15:
                add_cat(
                    "Price And Budget",
                    "Shoppers often pay more than for comparable items, trading price for perceived quality.",
                )
            else:
                add_cat("Price And Budget", "Shoppers choose among items of a similar price level.")
        band = self._band(category, purchase["price"])
        if band:
            add_cat("Price And Budget", f"Some shoppers in this category buy in the {band} price band.")
        for term in lexicon_hits(query, ("Usage Context",)).get("Usage Context", [])[:2]:
            add_cat("Usage Context", f"Requests name the use or occasion ({term}), which narrows the suitable items.")

        sub = purchase["subcategory"] or category
        mine = lexicon_hits(f"{purchase['title']} {purchase['description']}", ATTRIBUTE_ASPECTS)
        theirs = [lexicon_hits(f"{n['title']} {n['description']}", ATTRIBUTE_ASPECTS) for n in negatives]
        for aspect, terms in mine.items():
            common = Counter(t for h in theirs for t in set(h.get(aspect, [])))
            distinct = [t for t in terms if common[t] < max(1, len(negatives)) / 2][:3]
            if distinct:
                sub_level.append(
                    {
                        "subcategory": sub,
                        "aspect": aspect,
                        "description": f"The chosen {sub} item differs from similar ones in {aspect.lower()}: "
                        f"{', '.join(distinct)}.",
                        "values": distinct,  # lets the extractive merge count values instead of sentences
                    }
                )
        return {
            "category_level_personalization_aspects": cat_level,
            "subcategory_level_personalization_aspects": sub_level,
        }


def merge_aspects(results: list[dict], max_descriptions: int) -> dict[str, list[str]]:
    """The paper's step (B) without an LLM: canonical names, exact de-duplication, most frequent first.

    Aspects that carry `values` (the extractive step A) are aggregated per subcategory into one description
    listing the most frequent values; other descriptions are de-duplicated and, when repeated, say how often.
    """
    plain: dict[str, Counter[str]] = {}
    valued: dict[str, dict[str, Counter[str]]] = {}
    for res in results:
        for key in ("category_level_personalization_aspects", "subcategory_level_personalization_aspects"):
            for a in res.get(key) or []:
                if not isinstance(a, dict):
                    continue
                name = canonical_aspect(a.get("aspect", ""))
                values = [clean_text(v) for v in a.get("values") or [] if clean_text(v)]
                if name and values:
                    scope = clean_text(a.get("subcategory") or a.get("category"))
                    valued.setdefault(name, {}).setdefault(scope, Counter()).update(values)
                elif name and (desc := clean_text(a.get("description", ""))):
                    plain.setdefault(name, Counter())[desc] += 1
    scored: dict[str, list[tuple[int, str]]] = {}
    for name, descs in plain.items():
        for d, c in descs.items():
            scored.setdefault(name, []).append(
                (c, d if c == 1 else f"{d.rstrip('.')} (seen in {c} sampled purchases).")
            )
    for name, scopes in valued.items():
        for scope, values in scopes.items():
            top = ", ".join(v if c == 1 else f"{v} ({c})" for v, c in values.most_common(6))
            text = f"In {scope}, chosen items stood out from similar ones by {name.lower()} such as {top}."
            scored.setdefault(name, []).append((values.total(), text))
    ranked = sorted(scored, key=lambda k: (-sum(c for c, _ in scored[k]), k))
    return {name: [d for _, d in sorted(scored[name], key=lambda cd: -cd[0])][:max_descriptions] for name in ranked}
