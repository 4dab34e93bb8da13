"""A table of paired comparisons, each on its own shared requests, narrowed by how each side's answer parsed.

Why: a policy that breaks format scores 0 on its broken answers, so "full minus ablated" mixes what memory adds to
a finished profile with whether the profile was finished at all. Keeping only the requests where both answers
parsed (`a_format: wellformed`, `b_format: wellformed`) separates the two, but each pair then rests on its own
requests, so the pairs cannot share one reference and one request set as a combined table's rows do. Each row is
one `compare.compare_records` call (the same test `mrrec compare --a-format --b-format` prints) recomputed from the
committed per-request rows, so the block is never typed by hand. The spec is a YAML file with `kind: pairs` under
results/tables/, rendered like a combined table (`mrrec readme --table`); pairs not recorded yet are named under it.

A pair whose B is listed under `replicates` is A retrained with another `grpo_seed` and nothing else changed: its Δ
is one draw of run-to-run training noise, which no user-bootstrap CI contains, so the block states it beside the
pairs that share its A and names those whose |Δ| is within it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mrrec_lib.eval.tables import fmt, to_markdown
from mrrec_lib.results.combined import (
    DIGITS,
    REPLICATE_KEYS,
    changed_beyond,
    inside_spread,
    load_spec,
    record_links,
    run_system,
    signed_ci,
)
from mrrec_lib.results.compare import ANSWER_FORMATS, SUBSETS, compare_records
from mrrec_lib.results.layout import read_config

KIND = "pairs"
# What a replicate may change: the GRPO seed, and which rows its stage 05 scored (a replicate run scores only its policy).
REPLICA_KEYS = (*REPLICATE_KEYS, "eval_systems")


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
    replicates: list[tuple[str, str]] = field(default_factory=list)  # B sides that retrain their A with another seed


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
    replicates = [run_system(r, str(path)) for r in data.get("replicates", [])]
    stray = [_name(r) for r in replicates if r not in {b for _, b in pairs}]
    if stray:
        raise ValueError(f"{path}: replicates {stray} are not the B side of any pair")
    return PairsSpec(path.stem, str(data["title"]), pairs, str(data.get("metric", "N@100")), **formats, subset=subset,
                     replicates=replicates)


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
        if b in spec.replicates:
            _check_replicate(results / a[0], results / b[0])
        out.append({"a": _name(a), "b": _name(b), "replicate": b in spec.replicates,
                    "requests": r["shared_requests"], "users": r["shared_users"],
                    "mean_a": t["mean_a"], "mean_b": t["mean_b"], "diff": t["diff"], "lo": t["lo"], "hi": t["hi"],
                    "p": t["p_permutation"], "mdd": t["mdd"]})  # fmt: skip
    return pd.DataFrame(out)


def _check_replicate(a: Path, b: Path) -> None:
    """A replicate that changed more than the GRPO seed would pass an ablation off as noise."""
    moved = changed_beyond(read_config(a), read_config(b), REPLICA_KEYS)
    if moved:
        raise ValueError(f"{b}: listed as a replicate of {a.name} but its config also changes {moved}")


def noise_lines(table: pd.DataFrame) -> list[str]:
    """Per A with replicates: the largest replicate |Δ| and the other pairs of that A whose |Δ| is within it
    (`inside_spread`)."""
    lines = []
    for a, rows in table.groupby("a", sort=False):
        rep, other = rows[rows["replicate"]], rows[~rows["replicate"]]
        if rep.empty:
            continue
        spread = float(rep["diff"].abs().max())
        inside = other.loc[inside_spread(other["diff"], spread), "b"].tolist()
        lines.append(
            f"Run-to-run noise of `{a}`: the largest |Δ| of its {len(rep)} replicate{'s' * (len(rep) > 1)} (another "
            f"`grpo_seed`, nothing else changed) is {spread:.{DIGITS}f}; "
            + (f"within that: {', '.join(f'`{b}`' for b in inside)}." if inside else "no other pair of it is within that.")
        )
    return lines


def narrowed_to(spec: PairsSpec) -> str:
    """The filters in words, as the caption states them."""
    if spec.a_format == spec.b_format != "any":
        parts = [f"both answers {spec.a_format}"]
    else:
        parts = [f"{side}'s answer {f}" for side, f in (("A", spec.a_format), ("B", spec.b_format)) if f != "any"]
    if spec.subset != "all":
        parts.append(f"subset {spec.subset}")
    return " and ".join(parts)


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
        "Comparison (A − B)": f"`{r['a']}` − `{r['b']}`" + (" (replicate)" if r["replicate"] else ""),
        "Requests (users)": f"{r['requests']} ({r['users']})",
        f"{m} A vs B": f"{r['mean_a']:.{DIGITS}f} vs {r['mean_b']:.{DIGITS}f}",
        f"Δ {m} [CI]": signed_ci(r["diff"], r["lo"], r["hi"]),
        "p (sign-flip)": fmt(r["p"], ".4f"),
        "MDD": fmt(r["mdd"], f".{DIGITS}f"),
    } for r in table.to_dict("records")]
    lines = [
        f"{spec.title} Rendered by `mrrec readme --table results/tables/{spec.name}.yaml` from the per-request rows of "
        f"{record_links(results, runs, link_base)}: each pair on the requests both records scored"
        + (f", narrowed to {narrowed_to(spec)}" if narrowed_to(spec) else "")
        + f" (`mrrec compare A B{_flags(spec)}`), so each row has its own n; Δ = A minus B paired by request, 95% CI "
        "from resampling users, sign-flip p unadjusted, MDD at 80% power.",
        "",
        to_markdown(pd.DataFrame(rows)).rstrip("\n") if rows else "No pair recorded yet.",
    ]
    if rows:
        lines += [f"\n{line}" for line in noise_lines(table)]
    if missing:
        lines += ["", "Not recorded yet: " + ", ".join(f"`{p}`" for p in missing) + "."]
    return "\n".join(lines) + "\n"
