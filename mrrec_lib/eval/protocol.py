"""What Table 1 is computed over: the four evaluation settings and the request subsets.

A setting is a malformed-answer rule (`zero`: an unparseable LLM answer ranks
nothing; `raw_text`: its raw text is retrieved) times the user's earlier items kept
in or excluded from the ranking. One setting is the headline (`eval_malformed`,
`eval_exclude_history`), applied to every LLM row alike; the other three are
reported so a reader sees how much each choice moves the table. Subsets split the
requests where a difference could hide: requests sharing no word with the
target's title (no lexical shortcut) and categories with / without distractor
items in the pool.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from mrrec_lib.config import Config
from mrrec_lib.eval.systems import other_rule

PAIRED_METRICS = ("N@100", "R@100")  # what the reference is tested on against every other row


@dataclass(frozen=True)
class Setting:
    """One way of scoring the same answers: which malformed rule, and whether earlier items are ranked."""

    rule: str
    exclude_history: bool
    column: str  # the per-query rank column holding this setting (`evaluate.per_query_frame`)
    headline: bool

    @property
    def key(self) -> str:
        return f"{self.rule}/{'excl' if self.exclude_history else 'keep'}"

    @property
    def label(self) -> str:
        malformed = "malformed answers score 0" if self.rule == "zero" else "malformed answers retrieved as raw text"
        history = "earlier items excluded" if self.exclude_history else "earlier items kept"
        return f"{malformed}, {history}"


def settings(cfg: Config) -> list[Setting]:
    """The four settings, headline first, then the headline rule with the other history choice, then the other rule."""
    alt = other_rule(cfg.eval_malformed)
    out = []
    for rule, suffix in ((cfg.eval_malformed, ""), (alt, "_alt")):
        for exclude in (cfg.eval_exclude_history, not cfg.eval_exclude_history):
            column = f"rank_{'excl' if exclude else 'keep'}{suffix}"
            out.append(Setting(rule, exclude, column, headline=not suffix and exclude == cfg.eval_exclude_history))
    return out


def headline(cfg: Config) -> Setting:
    return settings(cfg)[0]


@dataclass(frozen=True)
class Subset:
    """A set of evaluation requests (qids), or None with the reason it cannot be formed on this run."""

    name: str
    description: str
    qids: frozenset[str] | None
    reason: str = ""

    @property
    def available(self) -> bool:
        return self.qids is not None


def subsets(queries: pd.DataFrame, covered_categories: list[str]) -> list[Subset]:
    """All requests, the no-title-overlap ones, and those in categories with / without distractors in the pool."""
    qid = queries["qid"].astype(str)
    out = [Subset("all", "every evaluated request", frozenset(qid))]
    if "title_overlap" in queries.columns:
        none = queries["title_overlap"].fillna(-1).astype(int) == 0
        out.append(
            Subset("no_overlap", "requests sharing no content word with the target's title", frozenset(qid[none]))
        )
    else:
        reason = "the queries table has no title_overlap column (built before stage 01 computed it)"
        out.append(Subset("no_overlap", "requests sharing no content word with the target's title", None, reason))
    covered = queries["category"].astype(str).isin(set(covered_categories))
    out.append(Subset("covered", "categories where distractor catalogs add items to the pool", frozenset(qid[covered])))
    out.append(Subset("uncovered", "categories without distractor items", frozenset(qid[~covered])))
    return out
