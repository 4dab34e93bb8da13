"""`mrrec` command line: run the notebooks of a config, batch ablations, and more."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import yaml

from mrrec_lib.config import ConfigError
from mrrec_lib.runner import StageFailed

PAUSED_EXIT = 3  # `mrrec run --budget-min` stopped at its budget: rerun the same command to resume


def _parse_sets(pairs: list[str]) -> dict:
    """`-p key=value` overrides; values are parsed as YAML so `-p memory_top_k=5` is an int."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"-p expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def _cmd_run(args: argparse.Namespace) -> int:
    from mrrec_lib import runner

    overrides = _parse_sets(args.set)
    if args.run_name:
        overrides["run_name"] = args.run_name
    files = [args.params, *args.file]
    if args.share:
        from mrrec_lib.ablate import share_finished_stages

        share_finished_stages(*runner.prepare_run(files, overrides))
    deadline = None if args.budget_min is None else time.time() + args.budget_min * 60
    try:
        paths = runner.run(
            files, only=args.only, overrides=overrides, force=args.force, log_output=args.verbose, deadline=deadline
        )
    except runner.StagePaused as e:
        print(f"paused: {e}", file=sys.stderr)
        return PAUSED_EXIT
    print(f"run folder: {paths.root}")
    _record_if_asked(args, paths.root)
    return 0


def _add_record_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--record", action="store_true", help="after the run succeeds, record it (as `mrrec record`)")
    parser.add_argument("--results-dir", default="results", help="where --record writes <run name>/ (default: results)")


def _record_if_asked(args: argparse.Namespace, run_dir: Path) -> None:
    if args.record:
        from mrrec_lib.results import record_run

        print(f"record: {record_run(run_dir, args.results_dir, command=args.command_line)}")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from mrrec_lib.evaluate_run import evaluate_run

    paths = evaluate_run(
        args.run,
        args.file,
        overrides=_parse_sets(args.set),
        run_name=args.run_name,
        log_output=args.verbose,
        share=args.share,
    )
    print(f"run folder: {paths.root}")
    _record_if_asked(args, paths.root)
    return 0


def _cmd_ablate(args: argparse.Namespace) -> int:
    from mrrec_lib.study import run_study

    run_study(
        args.base,
        args.deltas,
        budget_min=args.budget_min,
        results_dir=args.results_dir,
        dry_run=args.dry_run,
        retry_failed=args.retry_failed,
        command=args.command_line,
        scale=args.scale,
        partial=args.partial,
    )
    return 0


def _cmd_estimate(args: argparse.Namespace) -> int:
    from mrrec_lib.estimate import estimate, format_estimate

    print(format_estimate(estimate([args.params, *args.file])))
    return 0


def _cmd_ask(args: argparse.Namespace) -> int:
    from mrrec_lib.assistant import Assistant, format_trace

    assistant = Assistant.from_run(args.run)
    print(format_trace(assistant.recommend(args.user, args.request, k=args.k)))
    return 0


def _cmd_record(args: argparse.Namespace) -> int:
    from mrrec_lib.results import check_record, record_run

    dest = record_run(args.run, args.results_dir, allow_stale=args.allow_stale)
    files = sorted(p for p in dest.rglob("*") if p.is_file())
    print(f"record: {dest} ({len(files)} files, {sum(p.stat().st_size for p in files) / 1e3:.0f} kB)")
    for problem in check_record(dest):
        print(f"warning: {problem}", file=sys.stderr)
    return 0


def _cmd_readme(args: argparse.Namespace) -> int:
    from mrrec_lib.results import render_readme
    from mrrec_lib.results.readme import render_study, render_table
    from mrrec_lib.runs import resolve

    readme = resolve(args.readme)
    if args.check:
        from mrrec_lib.results.readme import outdated_blocks

        outdated = outdated_blocks(readme, resolve(args.results_dir))
        print("\n".join(outdated) or f"{readme}: every rendered block is what the records render now")
        return 1 if outdated else 0
    if not args.run and not args.table and not args.study and not args.figures:
        raise ValueError(
            "give --run (Table 1 of a record), --table (a table spec), --study (a plan), --figures (a folder) "
            "and/or --check"
        )
    if args.run:
        problems = render_readme(readme, resolve(args.results_dir), args.run)
        print(f"{readme}: Table 1 rendered from {resolve(args.results_dir) / args.run}")
        for problem in problems:
            print(f"warning: {problem}", file=sys.stderr)
    for spec in args.table:
        print(f"{readme}: table {render_table(readme, resolve(args.results_dir), resolve(spec))} rendered from {spec}")
    for plan in args.study:
        print(f"{readme}: study {render_study(readme, resolve(plan))} rendered from {plan}")
    if args.figures:
        from mrrec_lib.viz import record_tables as rt
        from mrrec_lib.viz.figures import write_png

        results = resolve(args.results_dir)
        committed = rt.committed_tables(results)
        curves, bars = rt.topk_curves(committed, results), rt.retriever_bars(committed, results)
        pairs = rt.committed_pairs_tables(results)
        for name, fig in rt.record_figures(committed, curves, bars, pairs).items():
            print(f"wrote {write_png(fig, resolve(args.figures) / f'{name}.png')}")
    return 0


def _cmd_check_record(args: argparse.Namespace) -> int:
    from mrrec_lib.results import check_record
    from mrrec_lib.runs import resolve

    record = resolve(args.results_dir) / args.run
    problems = check_record(record)
    print("\n".join(problems) if problems else f"{record}: current")
    return 1 if problems else 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from mrrec_lib.results.compare import compare_records, format_comparison
    from mrrec_lib.runs import resolve

    sides = []
    for spec in (args.a, args.b):
        run, sep, system = spec.partition(":")
        if not sep or not run or not system:
            raise ValueError(f"expected RUN:SYSTEM (a record under {args.results_dir}/ and one of its systems), got {spec!r}")
        sides.append((resolve(args.results_dir) / run, system))
    (a, sa), (b, sb) = sides
    result = compare_records(
        a, sa, b, sb, tuple(args.metric), subset=args.subset, b_format=args.b_format, a_format=args.a_format
    )
    return _report(args, format_comparison(result), result)


def _cmd_agree(args: argparse.Namespace) -> int:
    from mrrec_lib.results.agreement import format_agreement, row_agreement
    from mrrec_lib.runs import resolve

    results = resolve(args.results_dir)
    result = row_agreement(results / args.a, results / args.b, args.system or None)
    return _report(args, format_agreement(result), result)


def _report(args: argparse.Namespace, text: str, result: dict) -> int:
    """Print a record query's result and, with `--out`, keep it as JSON beside the command that made it."""
    from mrrec_lib.runs import resolve, write_json

    print(text)
    if args.out:
        write_json(resolve(args.out), {"command": args.command_line, **result})
        print(f"wrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mrrec", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="execute the numbered notebooks for a params file into outputs/<run>/")
    r.add_argument("params", help="base params YAML, e.g. params/default.yaml")
    r.add_argument("-f", "--file", action="append", default=[], help="params delta merged on top (repeatable)")
    r.add_argument("-p", "--set", action="append", default=[], metavar="KEY=VALUE", help="override one key")
    r.add_argument("--only", help="comma-separated stages, e.g. 01,02")
    r.add_argument("--run-name", help="output folder name (default: the config's run_name)")
    r.add_argument("--force", action="store_true", help="rerun stages even if their config hash is unchanged")
    r.add_argument("-v", "--verbose", action="store_true", help="stream notebook output to the terminal")
    r.add_argument(
        "--share",
        action="store_true",
        help="first hard-link the finished stages of the run under outputs_dir that shares the longest prefix of "
        "stage config hashes (as `mrrec ablate` does), so a delta run only computes what differs",
    )
    r.add_argument(
        "--budget-min",
        type=float,
        help=f"stop after this many minutes (the running stage's kernel is killed; exit {PAUSED_EXIT}); the same "
        "command resumes it from its checkpoints",
    )
    _add_record_args(r)
    r.set_defaults(func=_cmd_run)

    v = sub.add_parser(
        "evaluate",
        help="evaluate a trained run's policies on other data (stages 01, 02, 05; no training)",
        description="Build the data and memory of another data configuration (source, category, request set) "
        "in a new run folder beside the trained run and produce its Table 1 (stage 05) with the trained run's "
        "SFT/GRPO policies and its Rec-R1; nothing is retrained and the trained run is only read. The config is "
        "the trained run's config.yaml with the -f files and -p keys on top; keys of stages 03/04 cannot change "
        "the trained policies (a note lists them). evaluated_from.json in the new folder records the borrowed "
        "runs and how many evaluated requests come from users the policies were trained on.",
        epilog="example: mrrec evaluate --run outputs/default -f params/eval/agenticshop.yaml -p eval_max_queries=50",
    )
    v.add_argument("--run", required=True, help="the trained run folder, e.g. outputs/default")
    v.add_argument(
        "-f", "--file", action="append", default=[], help="params merged on top of the trained config (repeatable)"
    )
    v.add_argument("-p", "--set", action="append", default=[], metavar="KEY=VALUE", help="override one key")
    v.add_argument("--run-name", help="output folder name (default: <trained run>-on-<first -f file's stem>)")
    v.add_argument("-v", "--verbose", action="store_true", help="stream notebook output to the terminal")
    v.add_argument(
        "--share",
        action="store_true",
        help="first hard-link stages 01/02 of a run under outputs_dir with the same data and memory hashes (e.g. "
        "the trained run itself, when only inference keys change), so only stage 05 runs",
    )
    _add_record_args(v)
    v.set_defaults(func=_cmd_evaluate)

    a = sub.add_parser(
        "ablate",
        help="the ablation study: run and record what results/ lacks, within a time budget",
        description="Run the base params and each delta over it, in priority order (base, w/o global / local "
        "memory, Rec-R1, local-memory levels, top-k, BM25, seeds, GRPO from base, LLM memory builder, then unknown "
        "deltas by name). An ablation whose record results/<run>/ is current (same stage-01/05 config hashes, "
        "`mrrec check-record` clean) is skipped; one that failed with the same params (results/<run>/failed.json) "
        "too, unless --retry-failed. A run starts only if its estimated minutes (`mrrec estimate`, calibrated by "
        "the base run's measured stage times, minus stages shared with finished runs) fit the remaining budget; "
        "each finished run is recorded at once. Prints, and writes to <results-dir>/study.json, what is left.",
        epilog="example: mrrec ablate params/default.yaml params/ablations/*.yaml --budget-min 170",
    )
    a.add_argument("base", help="base params YAML, e.g. params/default.yaml")
    a.add_argument("deltas", nargs="+", help="params deltas, e.g. params/ablations/*.yaml")
    a.add_argument("--budget-min", type=float, help="wall-time budget in minutes (default: no limit)")
    a.add_argument("--results-dir", default="results", help="records are read from / written to <dir>/<run>/")
    a.add_argument("--dry-run", action="store_true", help="run nothing: print and write what is recorded and left")
    a.add_argument("--retry-failed", action="store_true", help="rerun ablations that failed with the same params")
    a.add_argument(
        "--partial",
        action="store_true",
        help="start the first run that does not fit the budget anyway and pause it (kernel killed) when the budget "
        "ends; its stages resume from their checkpoints on the next invocation while outputs/ survives, so runs "
        "longer than a session advance",
    )
    a.add_argument(
        "--scale",
        help="params overlay applied after every delta, e.g. params/eval/grpo_probe.yaml (the session-sized RL "
        "budget and evaluation): runs are named <base run>-<scale> and <scale>-<delta> (default-grpo-probe, "
        "grpo-probe-no_local_memory) and the plan goes to <results-dir>/study-<scale>.json",
    )
    a.set_defaults(func=_cmd_ablate)

    e = sub.add_parser("estimate", help="print expected tokens, time and embedding size per stage")
    e.add_argument("params")
    e.add_argument("-f", "--file", action="append", default=[])
    e.set_defaults(func=_cmd_estimate)

    q = sub.add_parser("ask", help="ask the assistant of a finished run for a recommendation")
    q.add_argument("request")
    q.add_argument("--run", required=True, help="run folder, e.g. outputs/default")
    q.add_argument("--user", required=True)
    q.add_argument("-k", type=int, default=10)
    q.set_defaults(func=_cmd_ask)

    c = sub.add_parser(
        "record",
        help="copy a finished run's config, stage hashes, metrics and per-request rows into results/<run>/",
        description="Write the compact, committed record of a run folder: config.yaml, stages.json, record.json "
        "(commit, machine, stage hashes, file digests), metrics/*.json and small tables, and per_query.csv.gz "
        "(stage 05's per-request ranks and metrics, no texts), from which Table 1 is recomputed. Refuses when "
        "stage 05 has not run, when a stage's hash no longer matches the run's config.yaml, or when the "
        "recomputed Table 1 differs from metrics/05_eval.json.",
        epilog="example: mrrec record outputs/default && mrrec readme --run default",
    )
    c.add_argument("run", help="the run folder, e.g. outputs/default")
    c.add_argument("--results-dir", default="results", help="records go to <results-dir>/<run name>/")
    c.add_argument("--allow-stale", action="store_true", help="record despite stale hashes or a mismatch (noted)")
    c.set_defaults(func=_cmd_record)

    m = sub.add_parser("readme", help="render Table 1 of a record between the README's results markers")
    m.add_argument("--run", help="the record's run name, e.g. default")
    m.add_argument(
        "--table",
        action="append",
        default=[],
        help="a table spec (`kind`: combined rows of several records on their shared requests, seeds, or pairs), "
        "rendered between <!-- results:table:<spec stem>:start/end --> (repeatable), e.g. results/tables/llm_320.yaml",
    )
    m.add_argument(
        "--study",
        action="append",
        default=[],
        help="a study plan written by `mrrec ablate`, rendered between <!-- results:study:<file stem>:start/end --> "
        "(repeatable), e.g. results/study.json",
    )
    m.add_argument(
        "--figures",
        help="write the figures the committed ablation records support (forest plot, top-k curve, retriever bars, pairs "
        "forests) as PNGs into this folder, e.g. docs/figures",
    )
    m.add_argument(
        "--check",
        action="store_true",
        help="write nothing: exit 1 naming every rendered block of --readme that its records, table spec or study "
        "plan would now render differently",
    )
    m.add_argument("--results-dir", default="results")
    m.add_argument("--readme", default="README.md")
    m.set_defaults(func=_cmd_readme)

    k = sub.add_parser("check-record", help="exit 1 when a record is stale under the current code, listing why")
    k.add_argument("run", help="the record's run name, e.g. default")
    k.add_argument("--results-dir", default="results")
    k.set_defaults(func=_cmd_check_record)

    d = sub.add_parser(
        "compare",
        help="paired test of two recorded systems, possibly of different runs, on the requests both scored",
        description="A minus B per request (user-cluster bootstrap CI, sign-flip p, Holm, MDD), from the committed "
        "per-request rows; refused unless both runs ranked the same requests on the same pool by the same rule.",
    )
    d.add_argument("a", help="RUN:SYSTEM, e.g. default-grpo-320:mrrec")
    d.add_argument("b", help="RUN:SYSTEM, e.g. default-sft-320:mrrec_sft")
    d.add_argument("--metric", nargs="+", default=["N@100", "R@100"])
    d.add_argument(
        "--subset",
        default="all",
        choices=["all", "no_overlap", "overlap"],
        help="only requests that share no content word (no_overlap) or some (overlap) with the target's title",
    )
    answer_formats = ["any", "wellformed", "malformed"]
    d.add_argument(
        "--b-format",
        default="any",
        choices=answer_formats,
        help="only requests where B's answer parsed (wellformed) or did not (malformed): separates a policy that "
        "fixed B's format from one that changed what B's well-formed answers say",
    )
    d.add_argument(
        "--a-format",
        default="any",
        choices=answer_formats,
        help="the same by A's answer; with --b-format wellformed, compares what two policies' parsed answers say",
    )
    d.add_argument("--results-dir", default="results")
    d.add_argument("--out", default="", help="also write the result as JSON here")
    d.set_defaults(func=_cmd_compare)

    g = sub.add_parser(
        "agree",
        help="how many rows of each system two records of the same requests and pool share exactly",
        description="Per system recorded in both: equal malformed flags and ranks of every scoring setting on the "
        "shared requests, and each record's headline means; names the stage hashes the records differ in.",
    )
    g.add_argument("a", help="a record's run name, e.g. default")
    g.add_argument("b", help="another record's run name, e.g. default-zeroshot-801")
    g.add_argument("--system", nargs="+", default=[], help="only these systems (default: all both recorded)")
    g.add_argument("--results-dir", default="results")
    g.add_argument("--out", default="", help="also write the result as JSON here")
    g.set_defaults(func=_cmd_agree)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["mrrec", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except StageFailed as e:
        print(f"mrrec {args.command}: {e}", file=sys.stderr)
        return 1
    except (ConfigError, FileNotFoundError, ValueError, KeyError) as e:
        print(f"mrrec {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
