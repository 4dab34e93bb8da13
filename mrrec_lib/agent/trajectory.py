"""The record of one rollout, shared by RL, SFT data, evaluation and the assistant.

Token ids are kept exactly as the model saw them (prompt + completion), with a
mask over the completion that is 1 only on tokens the model produced: SFT and
GRPO train on those, never on the retrieved memory that was pasted in.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mrrec_lib.runs import atomic_write_text, read_jsonl

FINISH_REASONS = ("answer", "length", "max_tool_calls", "error")


@dataclass
class ToolCallRecord:
    query: str | None
    entry_ids: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class Trajectory:
    qid: str
    prompt_kind: str
    messages: list[dict]
    tools: list[dict] | None = None
    sample: int = 0
    prompt_ids: list[int] = field(default_factory=list)
    completion_ids: list[int] = field(default_factory=list)
    completion_mask: list[int] = field(default_factory=list)  # 1: model token, 0: tool result / template around it
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    n_tool_calls: int = 0  # memory calls that ran
    n_invalid_calls: int = 0  # malformed, unknown tool, or over the limit
    parse_ok: bool = False
    parse_error: str | None = None
    profile: str = ""
    memory_ids: list[str] = field(default_factory=list)
    final_text: str = ""  # the last assistant turn, tool-call blocks removed
    n_new_tokens: int = 0  # tokens the model generated (estimated for text backends)
    n_completion_tokens: int = 0  # model + tool-result tokens after the prompt
    finish_reason: str = "answer"

    @property
    def retrieved_ids(self) -> list[str]:
        return [i for c in self.tool_calls for i in c.entry_ids]

    @property
    def tool_queries(self) -> list[str]:
        return [c.query for c in self.tool_calls if c.query and c.error is None]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trajectory:
        known = {f.name for f in fields(cls)}
        missing = {"qid", "prompt_kind", "messages"} - set(d)
        if missing:
            raise ValueError(f"trajectory record lacks key(s) {sorted(missing)}")
        kw = {k: v for k, v in d.items() if k in known}
        kw["tool_calls"] = [ToolCallRecord(**c) for c in d.get("tool_calls", [])]
        return cls(**kw)


def save_trajectories(path: Path, trajs: list[Trajectory], rewards: list[Any] | None = None) -> Path:
    """Write one JSON line per trajectory (with its reward breakdown, if given) atomically."""
    if rewards is not None and len(rewards) != len(trajs):
        raise ValueError(f"{len(trajs)} trajectories but {len(rewards)} rewards")
    lines = []
    for i, t in enumerate(trajs):
        row = t.to_dict()
        if rewards is not None:
            row["reward"] = asdict(rewards[i])
        lines.append(json.dumps(row, ensure_ascii=False))
    atomic_write_text(Path(path), "\n".join(lines) + ("\n" if lines else ""))
    return Path(path)


def load_trajectories(path: Path) -> list[Trajectory]:
    return [Trajectory.from_dict(r) for r in read_jsonl(Path(path))]
