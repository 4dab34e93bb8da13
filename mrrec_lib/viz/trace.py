"""The notebook view of a recommendation: one self-contained HTML block, and an optional interactive box.

Memory entries are highlighted where their keywords reach the ideal item profile
(the keyword heuristic of the paper's memory-contribution analysis, as in
`eval.contribution`), and the profile's words that came from retrieved memory
are marked too, so a reader sees which memory shaped the answer. Everything
model-written is HTML-escaped before it is shown.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from typing import Any

from mrrec_lib.assistant.format import POLICY_LABELS
from mrrec_lib.assistant.recommendation import SOURCE_LABELS, MemoryHit, Recommendation
from mrrec_lib.eval.contribution import keywords

_WORD = re.compile(r"[^\W\d_][^\W_]+")

_CSS = """
<style>
.mrrec-trace{font-family:system-ui,sans-serif;font-size:13px;line-height:1.45;max-width:980px}
.mrrec-trace h4{margin:14px 0 6px 0}
.mrrec-trace .meta{color:#555}
.mrrec-trace .req{font-size:15px;padding:6px 10px;border-left:4px solid #4a7bd0;background:#f3f6fc}
.mrrec-trace .turn{border:1px solid #ddd;border-radius:6px;padding:6px 10px;margin:6px 0}
.mrrec-trace .prose{white-space:pre-wrap}
.mrrec-trace .call{margin:6px 0 0 14px;color:#1f4e99;font-family:monospace}
.mrrec-trace .entry{margin:3px 0 3px 30px;padding:2px 6px;border-left:3px solid #ccc}
.mrrec-trace .entry.used{border-left-color:#e0a800;background:#fffaf0}
.mrrec-trace .err{color:#b00020}
.mrrec-trace mark{background:#ffe58a;padding:0 1px}
.mrrec-trace .badge{display:inline-block;font-size:11px;padding:0 5px;border-radius:8px;margin-left:4px;background:#eee}
.mrrec-trace .ok{background:#d8f5dd}.mrrec-trace .bad{background:#fbd5d9}
.mrrec-trace table{border-collapse:collapse}
.mrrec-trace td,.mrrec-trace th{padding:2px 8px;border-bottom:1px solid #eee;text-align:left}
.mrrec-trace tr.target{background:#d8f5dd;font-weight:600}
.mrrec-trace pre{white-space:pre-wrap;background:#fafafa;border:1px solid #eee;padding:6px}
</style>
"""


def _esc(text: Any) -> str:
    return html.escape(str(text if text is not None else ""))


def mark_keywords(text: str, words: set[str] | frozenset[str]) -> str:
    """`text` HTML-escaped, with every word whose keyword form is in `words` wrapped in <mark>."""
    out, last = [], 0
    for m in _WORD.finditer(text or ""):
        if keywords(m.group(0)) & words:
            out += [_esc(text[last : m.start()]), f"<mark>{_esc(m.group(0))}</mark>"]
            last = m.end()
    out.append(_esc((text or "")[last:]))
    return "".join(out)


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _badge(text: str, cls: str = "") -> str:
    return f'<span class="badge {cls}">{_esc(text)}</span>'


def _entry_html(h: MemoryHit) -> str:
    badges = ""
    if h.cited:
        badges += _badge("cited in answer", "ok")
    if h.reaches_profile:
        badges += _badge(f"in profile ({h.profile_overlap:.0%} of its keywords)", "ok")
    where = f"{h.level}, {h.category}" if h.level else "not in this snapshot's memory"
    cls = "entry used" if h.reaches_profile else "entry"
    body = mark_keywords(h.text, set(h.shared_keywords))
    return f'<div class="{cls}"><b>[{_esc(h.entry_id)}]</b> <i>({_esc(where)})</i> {body}{badges}</div>'


def _turns_html(rec: Recommendation) -> str:
    if not rec.turns:
        return '<div class="turn err">The policy produced no turn.</div>'
    parts = []
    for i, turn in enumerate(rec.turns, 1):
        inner = f'<div class="prose"><b>Turn {i}.</b> {_esc(turn.text) or "<i>(no prose)</i>"}</div>'
        call = turn.tool_call
        if call is not None:
            inner += f'<div class="call">→ memory_retrieval_tool(<b>{_esc(repr(call.query))}</b>)</div>'
            if call.error:
                inner += f'<div class="entry err">✗ {_esc(call.error)}</div>'
            elif not call.entries:
                inner += f'<div class="entry">{_esc(call.reply or "no entries")}</div>'
            inner += "".join(_entry_html(h) for h in call.entries)
        parts.append(f'<div class="turn">{inner}</div>')
    return "".join(parts)


def _answer_html(rec: Recommendation) -> str:
    memory_words = set().union(*(set(h.shared_keywords) for c in rec.tool_calls for h in c.entries))
    if rec.parse_ok:
        ids = ", ".join(_esc(i) for i in rec.memory_ids) or "none"
        extra = ""
        if rec.cited_not_retrieved:
            extra = f' <span class="err">(cited but never retrieved: {_esc(", ".join(rec.cited_not_retrieved))})</span>'
        return (
            f"<h4>Ideal item profile {_badge('parsed', 'ok')}</h4>"
            f'<div class="req">{mark_keywords(rec.profile, memory_words)}</div>'
            f"<div class='meta'>useful memory ids: {ids}{extra} · highlighted words come from retrieved memory</div>"
        )
    raw = rec.turns[-1].raw if rec.turns else ""
    return (
        f"<h4>Answer {_badge('malformed', 'bad')}</h4>"
        f'<div class="err">{_esc(rec.parse_error)} (finish: {_esc(rec.finish_reason)}). The last model output:</div>'
        f"<pre>{_esc(raw) or '(empty)'}</pre>"
        f"<div class='meta'>Items below were retrieved with {_esc(SOURCE_LABELS.get(rec.retrieval_source, rec.retrieval_source))}: "
        f"{_esc(rec.retrieval_text)}</div>"
    )


def _items_html(rec: Recommendation) -> str:
    rows = "".join(
        f'<tr class="{"target" if it.is_target else ""}"><td>{it.rank}</td><td>{it.score:.3f}</td>'
        f"<td>{_esc(it.title or '(untitled)')}{' ✅ purchased' if it.is_target else ''}</td>"
        f"<td>{_esc(it.category)}</td><td><code>{_esc(it.item_id)}</code></td></tr>"
        for it in rec.items
    )
    table = f"<table><tr><th>#</th><th>score</th><th>title</th><th>category</th><th>item id</th></tr>{rows}</table>"
    if rec.target_item_id:
        where = f"rank <b>{rec.target_rank:,}</b> of {rec.pool_size:,}" if rec.target_rank else "not ranked"
        table += f"<div class='meta'>Purchased item: {_esc(rec.target_title or rec.target_item_id)} — {where}</div>"
    return f"<h4>Top {len(rec.items)} of {rec.pool_size:,} items</h4>{table}"


def trace_html(rec: Recommendation) -> str:
    """The whole trace as one HTML block (CSS included), for `IPython.display.HTML`."""
    t = rec.timings
    meta = (
        f"run <b>{_esc(rec.run)}</b> · policy <b>{_esc(rec.policy)}</b> ({_esc(POLICY_LABELS.get(rec.policy, ''))}) · "
        f"user <b>{_esc(rec.user_id)}</b> · memory snapshot <code>{_esc(rec.snapshot)}</code> · "
        f"{t.get('total_s', 0):.1f} s (policy {t.get('policy_s', 0):.1f} s, retrieval {t.get('retrieval_s', 0):.2f} s)"
    )
    if rec.qid:
        meta += f" · dataset query <code>{_esc(rec.qid)}</code> ({_esc(rec.split)} split)"
    aspects = "".join(f"<li>{_esc(a.get('text', ''))}</li>" for a in rec.aspects)
    aspects_html = (
        f"<details><summary>Shared memory in the prompt ({len(rec.aspects)} aspects)</summary><ul>{aspects}</ul></details>"
        if rec.aspects
        else ""
    )
    return (
        f'{_CSS}<div class="mrrec-trace"><div class="meta">{meta}</div>'
        f'<h4>Request</h4><div class="req">{_esc(rec.request)}</div>{aspects_html}'
        f"<h4>Reasoning ({_plural(rec.n_tool_calls, 'memory call')}, {rec.n_invalid_calls} invalid)</h4>{_turns_html(rec)}"
        f"{_answer_html(rec)}{_items_html(rec)}</div>"
    )


def interactive_box(ask: Callable[[str, str], Recommendation], user: str = "", request: str = "") -> Any | None:
    """A user box, a request box and a button that renders `ask(user, request)` below; None without ipywidgets.

    Nothing waits for input, so a papermill run passes straight through; errors (an unknown user, an empty
    request) are shown in the output area instead of raised.
    """
    try:
        import ipywidgets as w
        from IPython.display import HTML, display
    except ImportError:
        return None
    user_box = w.Text(value=user, description="user", layout=w.Layout(width="320px"))
    request_box = w.Text(value=request, description="request", layout=w.Layout(width="640px"))
    button = w.Button(description="Recommend", button_style="primary")
    out = w.Output()

    def on_click(_: Any) -> None:
        out.clear_output()
        with out:
            try:
                display(HTML(trace_html(ask(user_box.value, request_box.value))))
            except (ValueError, KeyError) as e:
                print(f"error: {e}")

    button.on_click(on_click)
    box = w.VBox([w.HBox([user_box, button]), request_box, out])
    display(box)
    return box
