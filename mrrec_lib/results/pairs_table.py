"""A table of paired comparisons, each on its own shared requests, narrowed by how each side's answer parsed.

Why: a policy that breaks format scores 0 on its broken answers, so "full minus ablated" mixes what memory adds to
a finished profile with whether the profile was finished at all. Keeping only the requests where both answers
parsed (`a_format: wellformed`, `b_format: wellformed`) separates the two, but each pair then rests on its own
requests, so the pairs cannot share one reference and one request set as a combined table's rows do. Each row is
one `compare.compare_records` call (the same test `mrrec compare --a-format --b-format` prints) recomputed from the
committed per-request rows, so the block is never typed by hand. The spec is a YAML file with `kind: pairs` under
results/tables/, rendered like a combined table (`mrrec readme --table`); pairs not recorded yet are named under it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mrrec_lib.eval.tables import fmt, to_markdown
from mrrec_lib.results.combined import DIGITS, load_spec, record_links, run_system, signed_ci
from mrrec_lib.results.compare import ANSWER_FORMATS, SUBSETS, compare_records

KIND = "pairs"


@dataclass(frozen=True)
class PairsSpec:
    """`pairs` as ((record, system) of A, (record, system) of B); every pair narrowed by the same formats and subset."""

    name: str
    title: str
    pairs: list[tuple[tuple[str, str], tuple[str, str]]]
    metric: str
    a_format: str
    b_format: str
    subset: str


def read_pairs_spec(path: str | Path) -> PairsSpec:
    path = Path(path)
    data = load_spec(path, KIND, ("title", "pairs"))
    bad = [p for p in data["pairs"] if not isinstance(p, list) or len(p) != 2]
    if bad or not data["pairs"]:
        raise ValueError(f"{path}: `pairs` needs [A, B] items (each RUN:SYSTEM), got {bad or 'none'}")
    pairs = [(run_system(a, str(path)), run_system(b, str(path))) for a, b in data["pairs"]]
    formats = {k: str(data.get(k, "any")) for k in ("a_format", "b_format")}
    unknown = {k: v for k, v in formats.items() if v not in ANSWER_FORMATS}
    if unknown:
        raise ValueError(f"{path}: unknown answer format(s) {unknown}; choose from {sorted(ANSWER_FORMATS)}")
    subset = str(data.get("subset", "all"))
    if subset not in SUBSETS:
        raise ValueError(f"{path}: unknown subset {subset!r}; choose from {sorted(SUBSETS)}")
    return PairsSpec(path.stem, str(data["title"]), pairs, str(data.get("metric", "N@100")), **formats, subset=subset)


def _name(side: tuple[str, str]) -> str:
    return f"{side[0]}:{side[1]}"


def unrecorded(spec: PairsSpec, results_dir: str | Path) -> list[str]:
    """The pairs with a record not in `results_dir` yet, as "A − B"."""
    results = Path(results_dir)
    return [f"{_name(a)} − {_name(b)}" for a, b in spec.pairs if not all((results / s[0]).is_dir() for s in (a, b))]


def pairs_table(spec: PairsSpec, results_dir: str | Path) -> pd.DataFrame:
    """One row per recorded pair: shared requests and users after the format and subset filters, both means, the
    paired difference A − B with its user-bootstrap CI, sign-flip p (unadjusted: the pairs are no one family) and MDD."""
    results, skip = Path(results_dir), set(unrecorded(spec, results_dir))
    out: list[dict[str, Any]] = []
    for a, b in spec.pairs:
        if f"{_name(a)} − {_name(b)}" in skip:
            continue
        r = compare_records(results / a[0], a[1], results / b[0], b[1], (spec.metric,), spec.subset,
                            b_format=spec.b_format, a_format=spec.a_format)  # fmt: skip
        t = r["tests"][0]
        out.append({"a": _name(a), "b": _name(b), "requests": r["shared_requests"], "users": r["shared_users"],
                    "mean_a": t["mean_a"], "mean_b": t["mean_b"], "diff": t["diff"], "lo": t["lo"], "hi": t["hi"],
                    "p": t["p_permutation"], "mdd": t["mdd"]})  # fmt: skip
    return pd.DataFrame(out)


def narrowed_to(spec: PairsSpec) -> str:
    """The filters in words, as the caption states them."""
    if spec.a_format == spec.b_format != "any":
        parts = [f"both answers {spec.a_format}"]
    else:
        parts = [f"{side}'s answer {f}" for side, f in (("A", spec.a_format), ("B", spec.b_format)) if f != "any"]
    if spec.subset != "all":
        parts.append(f"subset {spec.subset}")
    return " and ".join(parts) or "no filter"


def _flags(spec: PairsSpec) -> str:
    """The `mrrec compare` options that reproduce one row."""
    chosen = {"--subset": spec.subset, "--a-format": spec.a_format, "--b-format": spec.b_format}
    return "".join(f" {k} {v}" for k, v in chosen.items() if v not in ("all", "any"))


def pairs_markdown(spec: PairsSpec, results_dir: str | Path, link_base: Path) -> str:
    """The Markdown block: provenance line, one row per recorded pair, the pairs not recorded yet."""
    results = Path(results_dir)
    table, missing = pairs_table(spec, results), unrecorded(spec, results)
    runs = dict.fromkeys(s[0] for pair in spec.pairs for s in pair if (results / s[0]).is_dir())
    m = spec.metric
    rows = [{
        "Comparison (A − B)": f"`{r['a']}` − `{r['b']}`",
        "Requests (users)": f"{r['requests']} ({r['users']})",
        f"{m} A vs B": f"{r['mean_a']:.{DIGITS}f} vs {r['mean_b']:.{DIGITS}f}",
        f"Δ {m} [CI]": signed_ci(r["diff"], r["lo"], r["hi"]),
        "p (sign-flip)": fmt(r["p"], ".4f"),
        "MDD": fmt(r["mdd"], f".{DIGITS}f"),
    } for r in table.to_dict("records")]
    lines = [
        f"{spec.title} Rendered by `mrrec readme --table results/tables/{spec.name}.yaml` from the per-request rows of "
        f"{record_links(results, runs, link_base)}: each pair on the requests both records scored, narrowed to "
        f"{narrowed_to(spec)} (`mrrec compare A B{_flags(spec)}`), so each "
        "row has its own n; Δ = A minus B paired by request, 95% CI from resampling users, sign-flip p unadjusted, "
        "MDD at 80% power.",
        "",
        to_markdown(pd.DataFrame(rows)).rstrip("\n") if rows else "No pair recorded yet.",
    ]
    if missing:
        lines += ["", "Not recorded yet: " + ", ".join(f"`{p}`" for p in missing) + "."]
    return "\n".join(lines) + "\n"
