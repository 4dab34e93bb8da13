"""What one answer of the assistant holds, and how it is read out of a rollout.

A `Recommendation` is self-contained (plain data, JSON-serialisable) so the
terminal view, the notebook's HTML view and the metrics file all render the
same record. The reasoning trace is rebuilt from the rollout's messages: one
`Turn` per assistant message, each with the memory call it made (if any) and the
entries that call returned, looked up in the snapshot's memory so the trace
shows their level, category and full text, not only their ids.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from mrrec_lib.agent.parse import TOOL_OPEN, strip_tool_calls
from mrrec_lib.agent.trajectory import Trajectory
from mrrec_lib.eval.contribution import DEFAULT_THRESHOLD, keywords, overlap


@dataclass
class MemoryHit:
    """One memory entry a tool call returned, with how much of it reached the retrieval text."""

    entry_id: str
    level: str = ""
    category: str = ""
    text: str = ""
    cited: bool = False  # listed in the answer's useful_memory_ids
    shared_keywords: list[str] = field(default_factory=list)  # the entry's keywords found in the profile
    profile_overlap: float | None = None  # share of the entry's keywords in the profile (None: no keywords)

    @property
    def reaches_profile(self) -> bool:
        """The memory-to-profile heuristic of the paper's contribution analysis (`eval.contribution`)."""
        return self.profile_overlap is not None and self.profile_overlap >= DEFAULT_THRESHOLD


@dataclass
class ToolCall:
    query: str | None
    entries: list[MemoryHit] = field(default_factory=list)
    error: str | None = None
    reply: str = ""  # the text the model read back (the error message, for a failed call)


@dataclass
class Turn:
    """One assistant message: its prose (tool-call block removed), the raw text, and the call it made."""

    text: str
    raw: str
    tool_call: ToolCall | None = None


@dataclass
class RecItem:
    rank: int
    item_id: str
    title: str
    category: str
    score: float
    is_target: bool = False


@dataclass
class Recommendation:
    run: str
    user_id: str
    request: str
    snapshot: str
    snapshot_ts: int
    policy: str  # grpo | sft | base
    prompt_kind: str
    aspects: list[dict[str, Any]]  # global memory shown in the prompt
    turns: list[Turn]
    profile: str
    memory_ids: list[str]
    parse_ok: bool
    parse_error: str | None
    finish_reason: str
    retrieval_text: str  # what was matched against the item pool
    retrieval_source: str  # profile | request+raw_text | request
    items: list[RecItem]
    pool_size: int
    n_tool_calls: int
    n_invalid_calls: int
    timings: dict[str, float]  # policy_s, retrieval_s, total_s
    qid: str | None = None
    split: str | None = None
    target_item_id: str | None = None
    target_title: str = ""
    target_rank: int | None = None  # exact rank over the whole pool

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [t.tool_call for t in self.turns if t.tool_call is not None]

    @property
    def uncited_retrieved(self) -> list[str]:
        return [h.entry_id for c in self.tool_calls for h in c.entries if not h.cited]

    @property
    def cited_not_retrieved(self) -> list[str]:
        """Ids the answer cites that no tool call returned: invented by the model."""
        seen = {h.entry_id for c in self.tool_calls for h in c.entries}
        return [i for i in self.memory_ids if i not in seen]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_turns(
    traj: Trajectory, n_prompt_messages: int, entries: dict[str, dict[str, str]], profile_text: str
) -> list[Turn]:
    """The trace of one rollout.

    Every call attempt leaves exactly one `ToolCallRecord` and comes from its own assistant message; every
    message but the last one made a call (otherwise the rollout would have ended there), and the last one
    made a call only when the rollout stopped on a limit. So record j belongs to assistant message j.
    `entries` maps the snapshot's entry ids to their rows; `profile_text` is what the keyword overlap is
    measured against.
    """
    cited = set(traj.memory_ids)
    profile_kw = keywords(profile_text)
    messages = traj.messages[n_prompt_messages:]
    turns: list[Turn] = []
    for i, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        raw = str(m.get("content") or "")
        j = len(turns)
        call = None
        if j < len(traj.tool_calls):
            rec = traj.tool_calls[j]
            nxt = messages[i + 1] if i + 1 < len(messages) else {}
            reply = str(nxt.get("content") or "") if nxt.get("role") == "tool" else ""
            hits = [_hit(e, entries.get(e, {}), e in cited, profile_kw) for e in rec.entry_ids]
            call = ToolCall(query=rec.query, entries=hits, error=rec.error, reply=reply)
        text = strip_tool_calls(raw) if TOOL_OPEN in raw else raw.strip()
        turns.append(Turn(text=text, raw=raw, tool_call=call))
    return turns


def _hit(entry_id: str, row: dict[str, str], cited: bool, profile_kw: frozenset[str]) -> MemoryHit:
    text = str(row.get("text", ""))
    kw = keywords(text)
    ov = overlap(kw, profile_kw)
    return MemoryHit(
        entry_id=entry_id,
        level=str(row.get("level", "")),
        category=str(row.get("category", "")),
        text=text,
        cited=cited,
        shared_keywords=sorted(kw & profile_kw),
        profile_overlap=None if ov != ov else round(ov, 3),
    )


SOURCE_LABELS = {
    "profile": "the ideal item profile",
    "request+raw_text": "the request plus the model's raw text",
    "request": "the request alone",
}


def retrieval_text(profile: str, parse_ok: bool, final_text: str, request: str) -> tuple[str, str]:
    """What to search the pool with, and where it came from (`profile`, `request+raw_text` or `request`).

    Training and evaluation score an unparseable answer 0; a user still wants items. The model's own prose
    alone can be off-topic (an untrained model may just say hello), so it is appended to the request, which
    keeps the search on what the user asked for; the trace says which text was used.
    """
    if parse_ok and profile.strip():
        return profile.strip(), "profile"
    if final_text.strip():
        return f"{request.strip()} {final_text.strip()}", "request+raw_text"
    return request.strip(), "request"
