"""The per-rollout memory environment TRL's GRPOTrainer drives (`environment_factory=`).

TRL creates one instance per rollout, calls `reset(**row)` with the dataset row
(so `snapshot` selects whose memory the tool searches: one user, as of the query's
time), and exposes every public method other than `reset` as a tool, named by the
method and described by its docstring. The same schema renders the SFT data and
the tool list shown at evaluation, so the policy sees one tool description everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

TOOL_NAME = "memory_retrieval_tool"


def make_memory_env(store: Any, k: int, tool_factory: Callable[[Any, str, int], Callable[[str], str]] | None = None):
    """A class whose instances are fresh memory environments; pass it as `environment_factory`.

    `tool_factory(store, snapshot, k)` builds the per-snapshot tool; it defaults to
    `mrrec_lib.memory.memory_tool` (injectable so tests can run without a memory store).
    """
    if tool_factory is None:
        from mrrec_lib.memory.store import memory_tool as tool_factory

    class MemoryEnv:
        def __init__(self) -> None:
            self.snapshot = ""
            self.queries: list[str] = []
            self._tool: Callable[[str], str] | None = None

        def reset(self, snapshot: str = "", **_: Any) -> None:
            self.snapshot = snapshot
            self.queries = []
            self._tool = tool_factory(store, snapshot, k)

        def memory_retrieval_tool(self, query: str) -> str:
            """Search this user's personal memory (past purchases, per-category preferences and general profile).

            Args:
                query: The preference aspect to look up, in a few words, e.g. "preferred coffee brands" or "price range".

            Returns:
                The best matching memory entries, one per line as "[entry_id] (level, category) text".
            """
            self.queries.append(query)
            if self._tool is None:
                return "memory unavailable: environment was not reset"
            return self._tool(query)

    return MemoryEnv


def tool_schema() -> dict[str, Any]:
    """The JSON schema of `memory_retrieval_tool` exactly as TRL renders it into the prompt."""
    from transformers.utils import get_json_schema

    env = make_memory_env(None, 0, tool_factory=lambda *_: lambda q: "")()
    return get_json_schema(env.memory_retrieval_tool)
