"""The terminal view of a recommendation (`mrrec ask`): plain text, wrapped to the terminal's width.

Order follows the reasoning: request, shared memory, each model turn with the
memory it fetched, the answer (or why it could not be read), then the items.
A malformed answer is printed verbatim, because the raw text is the only way to
see what the model did wrong.
"""

from __future__ import annotations

import shutil
import textwrap

from mrrec_lib.assistant.recommendation import SOURCE_LABELS, MemoryHit, Recommendation

POLICY_LABELS = {"grpo": "SFT + GRPO", "sft": "SFT warm-up, no RL", "base": "untrained base model"}
TITLE_CHARS = 100  # item titles are cut here in the list (Amazon titles run to 200+ characters)
RAW_CHARS = 600  # a malformed turn's raw text is cut here (the notebook view shows it whole)


def _wrap(text: str, width: int, indent: str, first: str | None = None) -> list[str]:
    lines: list[str] = []
    for para in [p for p in (text or "").splitlines() if p.strip()] or [""]:  # blank lines only stretch the trace
        lines += textwrap.wrap(para, width, initial_indent=first if first is not None and not lines else indent,
                               subsequent_indent=indent) or [indent.rstrip()]
    return lines


def _hit_line(h: MemoryHit) -> str:
    marks = []
    if h.cited:
        marks.append("cited")
    if h.reaches_profile:
        marks.append("in profile: " + ", ".join(h.shared_keywords[:6]))
    suffix = f"  <{'; '.join(marks)}>" if marks else ""
    where = f" ({h.level}, {h.category})" if h.level else " (not in this snapshot's memory)"
    return f"[{h.entry_id}]{where} {h.text}{suffix}"


def format_trace(rec: Recommendation, width: int | None = None) -> str:
    """The whole trace as wrapped text; `width` defaults to the terminal's (at most 110 columns)."""
    width = width or min(110, shutil.get_terminal_size((100, 24)).columns)
    out = [
        f"MR.Rec assistant · run {rec.run} · policy {rec.policy} ({POLICY_LABELS.get(rec.policy, rec.policy)})",
        f"user {rec.user_id} · memory snapshot {rec.snapshot} · {rec.timings.get('total_s', 0):.1f} s "
        f"(policy {rec.timings.get('policy_s', 0):.1f} s, retrieval {rec.timings.get('retrieval_s', 0):.2f} s)",
        "",
    ]
    out += _wrap(f'"{rec.request}"', width, "    ", first="Request: ")
    if rec.qid:
        out.append(f"(dataset query {rec.qid}, {rec.split} split)")
    if rec.aspects:
        out += ["", "Shared memory (what shoppers care about for such requests):"]
        for a in rec.aspects:
            out += _wrap(str(a.get("text", "")), width, "      ", first="  - ")
    out += ["", "Reasoning:"]
    if not rec.turns:
        out.append("  (the policy produced no turn)")
    for i, turn in enumerate(rec.turns, 1):
        out += _wrap(turn.text or "(no prose)", width, "      ", first=f"  [{i}] ")
        call = turn.tool_call
        if call is None:
            continue
        out += _wrap(f"memory_retrieval_tool({call.query!r})", width, "        ", first="      → ")
        if call.error:
            out += _wrap(f"error: {call.error}", width, "          ", first="        ✗ ")
        elif not call.entries:
            out += _wrap(call.reply or "no entries", width, "          ", first="        · ")
        for h in call.entries:
            out += _wrap(_hit_line(h), width, "          ", first="        · ")
    out.append("")
    if rec.parse_ok:
        out += _wrap(rec.profile, width, "    ", first="Ideal item profile: ")
        out.append("Useful memory ids: " + (", ".join(rec.memory_ids) or "none"))
        if rec.cited_not_retrieved:
            out.append("  (cited but never retrieved: " + ", ".join(rec.cited_not_retrieved) + ")")
    else:
        out.append(f"MALFORMED ANSWER ({rec.parse_error}; finish: {rec.finish_reason}). Last model output:")
        raw = rec.turns[-1].raw if rec.turns else ""
        cut = raw[:RAW_CHARS] + (" ..." if len(raw) > RAW_CHARS else "")
        out += _wrap(cut or "(empty)", width, "    ")
        label = SOURCE_LABELS.get(rec.retrieval_source, rec.retrieval_source)
        shown = textwrap.shorten(rec.retrieval_text, RAW_CHARS // 2, placeholder=" ...")
        out += _wrap(shown, width, "    ", first=f"Items retrieved with {label}: ")
    out += ["", f"Top {len(rec.items)} of {rec.pool_size:,} items:"]
    for it in rec.items:
        mark = "  ← purchased (target)" if it.is_target else ""
        title = textwrap.shorten(it.title, TITLE_CHARS, placeholder=" ...") if it.title else "(untitled)"
        label = f"{title} · {it.category or '?'} · {it.item_id}{mark}"
        out += _wrap(label, width, " " * 14, first=f"  {it.rank:>3}. {it.score:6.3f}  ")
    if rec.target_item_id:
        out.append("")
        where = f"rank {rec.target_rank:,} of {rec.pool_size:,}" if rec.target_rank else "not ranked"
        out += _wrap(f"{rec.target_title or rec.target_item_id} ({where})", width, "    ", first="Purchased item: ")
    return "\n".join(out)
