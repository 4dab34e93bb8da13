"""How much of the target's title a request gives away: `title_overlap`.

A request that names words of its target's title turns retrieval into a title
lookup; Amazon-C4 requests do name the product kind ("bone broth"), so some
overlap is expected, but it must be measured per request and per builder.

Content words (the rule): the text is normalised (`data.text.normalise`: lower
case, every run of characters other than a-z/0-9 is a word break), then words
that are stopwords (`STOPWORDS`: English function words and request
boilerplate such as "looking", "need", "recommend"), shorter than
`MIN_WORD_CHARS` letters, or made of digits only are dropped, and a plural "s"
is folded ("notebooks" = "notebook"; not after "ss", "us" or "is").
`title_overlap(a, b)` is the number of distinct content words of `a` that are
content words of `b`; `title_overlap_report` gives stage 01's rates.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from mrrec_lib.data.queries import extractive_request, review_views
from mrrec_lib.data.text import normalise

MIN_WORD_CHARS = 3
STOPWORDS = frozenset(
    """
    a about above after again against all also am an and any are as at be because been before being below between
    both but by can could did do does doing down during each even ever every few for from further get gets got had
    has have having he her here hers herself him himself his how however i if in into is it its itself just less
    like made make makes many may me might more most much must my myself need needs no nor not now of off often on
    once one only or other our ours ourselves out over own per please quite rather really same she should so some
    something such than that the their theirs them themselves then there these they thing things this those
    through to too under until up upon us use used using very want wants was way we well were what when where which
    while who whom why will with would yet you your yours yourself yourselves
    looking look recommend recommendation recommendations suggest suggestion suggestions any anything buy buying
    find finding help ideally prefer preferably good great nice best better ideal perfect around lot lots kind type
    item items product products pick options option
    """.split()
)


def _fold(word: str) -> str:
    if len(word) > MIN_WORD_CHARS and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def content_words(text: object) -> set[str]:
    """The distinct content words of a text (the module docstring states the rule)."""
    return {
        _fold(w) for w in normalise(text).split() if len(w) >= MIN_WORD_CHARS and not w.isdigit() and w not in STOPWORDS
    }


def title_overlap(text: object, title: object) -> int:
    """Number of content words of `text` that are also content words of `title`."""
    return len(content_words(text) & content_words(title))


def overlap_column(texts: pd.Series, titles: pd.Series) -> pd.Series:
    """`title_overlap` row by row (index-aligned), as int64."""
    return pd.Series(
        [title_overlap(t, ti) for t, ti in zip(texts, titles, strict=True)], index=texts.index, dtype="int64"
    )


def overlap_rate(overlaps: pd.Series) -> float:
    """Share of requests with at least one title word (0.0 when there are none)."""
    return round(float((overlaps >= 1).mean()), 4) if len(overlaps) else 0.0


def title_overlap_report(queries: pd.DataFrame, titles: pd.Series) -> dict[str, Any]:
    """Share of requests that name a word of their target's title: ours (`query`, `raw_query`) and the
    extractive builder's on the same targets, overall and per source.

    Rates are over the requests whose target has a title (a Beauty item may have
    review text only); `title_overlap_requests_without_title` counts the others.
    """
    titled = titles.fillna("").str.strip().ne("")
    extractive = [extractive_request(r)[1] for r in review_views(queries)]
    ext = overlap_column(pd.Series(extractive, index=queries.index), titles.fillna(""))

    def rates(mask: pd.Series) -> dict[str, Any]:
        m = mask & titled
        return {
            "title_overlap_rate": overlap_rate(queries.loc[m, "title_overlap"]),
            "title_overlap_rate_raw": overlap_rate(queries.loc[m, "title_overlap_raw"]),
            "title_overlap_rate_extractive": overlap_rate(ext[m]),
            "title_overlap_requests_with_title": int(m.sum()),
        }

    everything = pd.Series(True, index=queries.index)
    return {
        **rates(everything),
        "title_overlap_requests_without_title": int((~titled).sum()),
        "title_overlap_mean_words": round(float(queries.loc[titled, "title_overlap"].mean()), 2)
        if titled.any()
        else 0.0,
        "title_overlap_per_source": {src: rates(queries["source"] == src) for src in sorted(set(queries["source"]))},
    }
