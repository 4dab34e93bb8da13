"""The personalized recommendation assistant of a finished run (`mrrec ask`, notebook 07)."""

from mrrec_lib.assistant.core import Ask, Assistant, AssistantInputError, RunNotFoundError, best_policy, find_run
from mrrec_lib.assistant.format import format_trace
from mrrec_lib.assistant.recommendation import MemoryHit, RecItem, Recommendation, ToolCall, Turn

__all__ = [
    "Ask",
    "Assistant",
    "AssistantInputError",
    "MemoryHit",
    "RecItem",
    "Recommendation",
    "RunNotFoundError",
    "ToolCall",
    "Turn",
    "best_policy",
    "find_run",
    "format_trace",
]
