"""Cost accounting for memory construction: the paper's efficiency table (Table 4 form).

Costs are recorded per finished unit in the resumable parts files, so a build
that was killed and resumed still reports the whole work once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import pandas as pd

from mrrec_lib.config import Config


@dataclass
class BuildStats:
    memory: str  # "local" | "global"
    builder: str  # "extractive" | "llm"
    source_users: int = 0
    units: int = 0  # snapshots (local) or sampled queries (global)
    entries: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    llm_calls: int = 0
    cache_hits: int = 0
    seconds: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)  # llm / llm_retry / fallback / extractive per work unit
    reused: int = 0  # work units served from identical earlier input (shared across snapshots of a user)
    skipped: int = 0  # sampled queries whose purchase has no item metadata

    @property
    def llm_failures(self) -> int:
        return self.statuses.get("fallback", 0)

    def cost(self, cfg: Config) -> float:
        return (
            self.input_tokens * cfg.price_per_m_input_tokens + self.output_tokens * cfg.price_per_m_output_tokens
        ) / 1e6

    def to_dict(self, cfg: Config) -> dict:
        d = asdict(self)
        d.update(llm_failures=self.llm_failures, cost_usd=self.cost(cfg))
        return d


def add_costs(stats: BuildStats, costs: list[dict[str, float]]) -> None:
    """Add per-unit cost shares (usage deltas split over a batch) to `stats`, rounding once at the end."""
    total = {
        f: sum(c[f] for c in costs) for f in ("prompt_tokens", "completion_tokens", "calls", "cache_hits", "seconds")
    }
    stats.input_tokens += round(total["prompt_tokens"])
    stats.output_tokens += round(total["completion_tokens"])
    stats.llm_calls += round(total["calls"])
    stats.cache_hits += round(total["cache_hits"])
    stats.seconds += total["seconds"]


def efficiency_table(stats: list[BuildStats], cfg: Config) -> pd.DataFrame:
    """Source users, tokens, entries, time and estimated API cost per memory build."""
    rows = []
    for s in stats:
        rows.append(
            {
                "memory": s.memory,
                "builder": s.builder,
                "source users": s.source_users,
                "units": s.units,
                "input tokens (M)": s.input_tokens / 1e6,
                "output tokens (M)": s.output_tokens / 1e6,
                "cached LLM calls": s.cache_hits,
                "entries": s.entries,
                "total time (s)": s.seconds,
                "time per entry (ms)": 1000 * s.seconds / s.entries if s.entries else float("nan"),
                "time per unit (s)": s.seconds / s.units if s.units else float("nan"),
                "LLM fallbacks": s.llm_failures,
                "est. cost (USD)": s.cost(cfg),
            }
        )
    return pd.DataFrame(rows)
