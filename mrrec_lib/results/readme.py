"""README's benchmark summary and Table 1, rendered from a committed record between markers.

The table is recomputed from the record's per-request rows (`recompute_table`), never copied
from a JSON or typed by hand, and carries its provenance: which record, commit and command, how
many requests and users, and the headline protocol. Rendering is deterministic (no "rendered
at" time), so re-rendering an unchanged record leaves README.md untouched; a stale record is
rendered with a visible notice rather than refused, because its numbers are still what was
measured at the stated commit.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from mrrec_lib.eval.evaluate import metric_names
from mrrec_lib.eval.protocol import headline
from mrrec_lib.eval.tables import NOT_RUN, fmt, fmt_ci, to_markdown
from mrrec_lib.results.layout import read_config, read_per_query, read_record, record_dir
from mrrec_lib.results.recompute import recompute_table
from mrrec_lib.results.stale import check_record
from mrrec_lib.runs import atomic_write_text, project_root, read_json

START = "<!-- results:table1:start -->"
END = "<!-- results:table1:end -->"
BENCH_START = "<!-- results:benchmark:start -->"
BENCH_END = "<!-- results:benchmark:end -->"
DATA_METRICS = "metrics/01_data.json"


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


def benchmark_markdown(record: Path) -> str:
    """What the benchmark holds (requests, users, categories, pool, splits, title overlap, leakage), from the
    record's stage-01 metrics: the numbers a reader needs before trusting Table 1."""
    path = record / DATA_METRICS
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the record has no stage-01 metrics (stage 01_data_prep)")
    d = read_json(path)
    c, pool = d["counts"], d.get("pool") or {}
    splits = ", ".join(
        f"{s} {d['queries_per_split'][s]:,} ({d['users_per_split'][s]} users)" for s in d["queries_per_split"]
    )
    sources = ", ".join(f"{src} {v['queries']:,} ({v['users']} users)" for src, v in d["per_source"].items())
    lines = [
        f"- {c['queries']:,} requests from {c['users']} users in {c['categories']} categories ({sources}); "
        f"builder `{d.get('query_builder', '?')}`; {c['interactions']:,} history interactions.",
        f"- Splits by user: {splits}.",
        f"- Pool: {d['pool_size']:,} items"
        + (
            f", of which {pool['added']:,} real distractors ({pool['duplicate_of_pool']} dropped as duplicates of pool "
            f"items, {pool['duplicate_within']:,} within the catalogs), covering {len(pool['covered_categories'])} categories."
            if pool.get("enabled")
            else " (no distractors)."
        ),
        f"- Requests sharing a content word with the target's title: {d['title_overlap_rate']:.1%} "
        f"(the C4-style request before simplification: {d['title_overlap_rate_raw']:.1%}; the extractive builder on "
        f"the same targets: {d['title_overlap_rate_extractive']:.1%}).",
        f"- Repurchases dropped: {d['repurchases_dropped']['total']}; leakage violations: {d['leakage_violations']}.",
    ]
    return "\n".join(lines) + "\n"


def _replace_block(text: str, start_mark: str, end_mark: str, block: str, where: str) -> str:
    start, end = text.find(start_mark), text.find(end_mark)
    if start < 0 or end < start or text.count(start_mark) != 1 or text.count(end_mark) != 1:
        raise ValueError(f"{where}: needs one `{start_mark}` line followed by one `{end_mark}` line")
    return f"{text[: start + len(start_mark)]}\n{block}{text[end:]}"


def render_readme(readme_path: str | Path, results_dir: str | Path, run: str) -> list[str]:
    """Replace Table 1 (between START and END) and, when its markers exist, the benchmark summary (between
    BENCH_START and BENCH_END) in `readme_path` with run `run`'s record; return the record's stale problems."""
    readme = Path(readme_path)
    text = readme.read_text()
    record = record_dir(results_dir, run)
    if not record.is_dir():
        raise FileNotFoundError(f"no record {record}: write it with `mrrec record outputs/{run}`")
    block, problems = table1_markdown(record, readme.parent)
    new = _replace_block(text, START, END, block, f"{readme} (where Table 1 goes)")
    if BENCH_START in new:
        new = _replace_block(new, BENCH_START, BENCH_END, benchmark_markdown(record), f"{readme} (benchmark summary)")
    if new != text:
        atomic_write_text(readme, new)
    return problems


def _write_block(readme: Path, markers: tuple[str, str], block: str, what: str) -> None:
    """Replace one marked block of `readme`, writing (atomically) only when the text changes."""
    text = readme.read_text()
    new = _replace_block(text, *markers, block, f"{readme} ({what})")
    if new != text:
        atomic_write_text(readme, new)


def table_markers(name: str) -> tuple[str, str]:
    """The README markers a combined table `name` (its spec file's stem) is rendered between."""
    return f"<!-- results:table:{name}:start -->", f"<!-- results:table:{name}:end -->"


def table_block(spec_path: str | Path, results_dir: str | Path, link_base: Path) -> tuple[str, str]:
    """Table `spec_path` rendered (links relative to `link_base`) as (name, Markdown block), by the spec's `kind`: a
    combined table (`results.combined`), a seed table (`results.seed_table`) or a pairs table (`results.pairs_table`)."""
    from mrrec_lib.results import pairs_table, seed_table
    from mrrec_lib.results.combined import read_spec, spec_kind, table_markdown

    kind = spec_kind(spec_path) if Path(spec_path).exists() else None
    if kind == seed_table.KIND:
        seeds = seed_table.read_seed_spec(spec_path)
        return seeds.name, seed_table.seed_markdown(seeds, results_dir, link_base)
    if kind == pairs_table.KIND:
        pairs = pairs_table.read_pairs_spec(spec_path)
        return pairs.name, pairs_table.pairs_markdown(pairs, results_dir, link_base)
    spec = read_spec(spec_path)
    return spec.name, table_markdown(spec, results_dir, link_base)


def render_table(readme_path: str | Path, results_dir: str | Path, spec_path: str | Path) -> str:
    """Replace the block of table `spec_path` in `readme_path`; return its name."""
    readme = Path(readme_path)
    name, block = table_block(spec_path, results_dir, readme.parent)
    _write_block(readme, table_markers(name), block, name)
    return name


def study_markers(name: str) -> tuple[str, str]:
    """The markers a study plan `name` (its JSON file's stem, e.g. study-grpo-probe) is rendered between."""
    return f"<!-- results:study:{name}:start -->", f"<!-- results:study:{name}:end -->"


def _time_left(minutes: float) -> str:
    """Hours only where they say more than the minutes do: "~0 h" for a 28-minute rest would read as nothing."""
    if minutes < 0.5:
        return "nothing left"
    if minutes < 60:
        return f"{minutes:.0f} min of 2-core CPU left"
    return f"{minutes:,.0f} min (~{minutes / 60:.0f} h of 2-core CPU) left"


def study_markdown(study_path: str | Path) -> str:
    """A study plan (`mrrec ablate` writes results/study*.json) as a table: what is recorded, what is left and
    its estimated minutes, priced from the recorded stage times, so the docs never carry a hand-typed estimate."""
    path = Path(study_path)
    if not path.exists():
        raise FileNotFoundError(f"study plan not found: {path} (`mrrec ablate ... --dry-run` writes it)")
    d = read_json(path)
    missing = [k for k in ("base", "minutes_left", "ablations", "written_at") if k not in d]
    if missing:
        raise ValueError(f"{path}: not a study plan, missing key(s) {missing}")
    rows = d["ablations"]
    scale = f" --scale {d['scale']}" if d.get("scale") else ""
    done = sum(r["status"] == "recorded" for r in rows)
    table = pd.DataFrame([{
        "ablation": r["ablation"], "run": f"`{r['run']}`", "status": r["status"],
        "min left": f"{r['minutes_left']:.0f}", "stages left": ", ".join(r["stages_left"]) or "—",
        "note": r.get("note") or "",
    } for r in rows])
    lines = [
        f"Study plan `{path.name}` (`mrrec ablate {d['base']} <each ablation's params/ablations/NAME.yaml>{scale} "
        f"--dry-run`, {d['written_at'][:10]}): {done} of {len(rows)} runs recorded in `results/`, "
        f"{_time_left(d['minutes_left'])}, each run priced from the recorded stage times.",
        "",
        to_markdown(table).rstrip("\n"),
    ]
    return "\n".join(lines) + "\n"


def render_study(readme_path: str | Path, study_path: str | Path) -> str:
    """Replace the block of study plan `study_path` in `readme_path`; return its name."""
    readme, name = Path(readme_path), Path(study_path).stem
    _write_block(readme, study_markers(name), study_markdown(study_path), f"study {name}")
    return name


_MARKED = re.compile(r"<!-- results:(table|study):([\w.-]+):start -->")
_TABLE1_RUN = re.compile(r"`mrrec readme --run ([\w.-]+)`")


def _current(text: str, markers: tuple[str, str]) -> str:
    start, end = text.index(markers[0]) + len(markers[0]) + 1, text.index(markers[1])
    return text[start:end]


def outdated_blocks(doc_path: str | Path, results_dir: str | Path) -> list[str]:
    """The marked blocks of `doc_path` that differ from what the committed records, table specs
    (`<results_dir>/tables/NAME.yaml`) and study plans (`<results_dir>/NAME.json`) render now, each with the
    command that re-renders it; [] when the document is current. Why: a block is only trustworthy while it is
    what its records say, and a record, spec or plan changed without re-rendering leaves it silently behind."""
    doc, results = Path(doc_path), Path(results_dir)
    text = doc.read_text()
    expected: list[tuple[str, tuple[str, str], str]] = []  # (re-render option, markers, block the records give now)
    for kind, name in _MARKED.findall(text):
        if kind == "table":
            spec = results / "tables" / f"{name}.yaml"
            expected.append((f"--table {spec}", table_markers(name), table_block(spec, results, doc.parent)[1]))
        else:
            plan = results / f"{name}.json"
            expected.append((f"--study {plan}", study_markers(name), study_markdown(plan)))
    if START in text:
        run = _TABLE1_RUN.search(_current(text, (START, END)))
        if not run:
            return [f"{doc}: Table 1 block does not name its record (`mrrec readme --run NAME`)"]
        record = record_dir(results, run.group(1))
        expected.append((f"--run {run.group(1)}", (START, END), table1_markdown(record, doc.parent)[0]))
        if BENCH_START in text:
            expected.append((f"--run {run.group(1)}", (BENCH_START, BENCH_END), benchmark_markdown(record)))
    return [f"{doc}: outdated, re-render with `mrrec readme {option} --readme {doc}`"
            for option, markers, block in expected if _current(text, markers) != block]
