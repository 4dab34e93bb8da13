"""README's Table 1, rendered from a committed record between two markers.

The table is recomputed from the record's per-request rows (`recompute_table`), never copied
from a JSON or typed by hand, and carries its provenance: which record, commit and command, how
many requests and users, and the headline protocol. Rendering is deterministic (no "rendered
at" time), so re-rendering an unchanged record leaves README.md untouched; a stale record is
rendered with a visible notice rather than refused, because its numbers are still what was
measured at the stated commit.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from mrrec_lib.eval.evaluate import metric_names
from mrrec_lib.eval.protocol import headline
from mrrec_lib.eval.tables import NOT_RUN, fmt, fmt_ci, to_markdown
from mrrec_lib.results.layout import read_config, read_per_query, read_record, record_dir
from mrrec_lib.results.recompute import recompute_table
from mrrec_lib.results.stale import check_record
from mrrec_lib.runs import atomic_write_text, project_root

START = "<!-- results:table1:start -->"
END = "<!-- results:table1:end -->"


def display_table(table: pd.DataFrame, ks: list[int]) -> pd.DataFrame:
    """System, memory, "mean [lo, hi]" per headline metric, memory tokens and malformed share."""
    rows = []
    for r in table.to_dict("records"):
        ok = r["status"] == "ok"
        row = {"System": r["method"], "Memory": r["memory"]}
        row.update({m: fmt_ci(r[m], r[f"{m}_lo"], r[f"{m}_hi"]) if ok else NOT_RUN for m in metric_names(ks)})
        row["Mem. tokens"] = fmt(r.get("memory_tokens"), ".1f") if ok else NOT_RUN
        row["Malformed"] = fmt(r.get("malformed_rate"), ".0%") if ok else NOT_RUN
        rows.append(row)
    return pd.DataFrame(rows)


def _commit(rec: dict) -> str:
    """The commit at recording time, and stage 05's start commit when that is an older one."""
    git = rec.get("git")
    if not git:
        return "outside a git checkout"
    text = f"commit `{git['commit'][:7]}`" + (" with uncommitted changes" if git["dirty"] else "")
    started = (rec.get("stages", {}).get("05") or {}).get("commit_before_start")
    return text + (f"; stage 05 started after commit `{started[:7]}`" if started and started != git["commit"] else "")


def _footnotes(table: pd.DataFrame) -> list[str]:
    """Why rows did not run, with this machine's project path cut so the README reads the same everywhere."""
    root = f"{project_root()}/"
    return [f"- `{r.system}` not run: {r.reason.replace(root, '')}" for r in table.itertuples() if r.status != "ok"]


def table1_markdown(record: Path, link_base: Path) -> tuple[str, list[str]]:
    """The Markdown block for `record` (links relative to `link_base`), and the record's stale problems."""
    cfg = read_config(record)
    rec, rows, table = read_record(record), read_per_query(record), recompute_table(record)
    problems = check_record(record)
    link = Path(os.path.relpath(record, link_base)).as_posix()
    setting = headline(cfg)
    made_by = f" The run was made by `{rec['run_command']}`." if rec.get("run_command") else ""
    lines = [
        f"Table 1 (stage 05, run `{rec['run']}`): mean [95% CI, users resampled, {cfg.bootstrap_samples} draws] over "
        f"{rows['qid'].nunique()} {cfg.eval_split} requests from {rows['user_id'].nunique()} users; headline: "
        f"{setting.label} (`eval_malformed: {cfg.eval_malformed}`, "
        f"`eval_exclude_history: {str(cfg.eval_exclude_history).lower()}`).",
        f"Recomputed by `mrrec readme --run {rec['run']}` from the {len(rows)} per-request rows of "
        f"[`{link}/`]({link}/) (recorded {rec['recorded_at'][:10]}, {_commit(rec)}).{made_by} "
        f"Reproduce: `{rec['reproduce']}`.",
        "",
        to_markdown(display_table(table, cfg.eval_ks), _footnotes(table)).rstrip("\n"),
    ]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        lines.append(f"\n**Stale record** (`mrrec check-record {rec['run']}`): {problems[0]}{more}")
    return "\n".join(lines) + "\n", problems


def render_readme(readme_path: str | Path, results_dir: str | Path, run: str) -> list[str]:
    """Replace the text between START and END in `readme_path` with run `run`'s Table 1; return its stale problems."""
    readme = Path(readme_path)
    text = readme.read_text()
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start or text.count(START) != 1 or text.count(END) != 1:
        raise ValueError(f"{readme}: needs one `{START}` line followed by one `{END}` line where Table 1 goes")
    record = record_dir(results_dir, run)
    if not record.is_dir():
        raise FileNotFoundError(f"no record {record}: write it with `mrrec record outputs/{run}`")
    block, problems = table1_markdown(record, readme.parent)
    new = f"{text[: start + len(START)]}\n{block}{text[end:]}"
    if new != text:
        atomic_write_text(readme, new)
    return problems
