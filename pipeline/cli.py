"""The `neuron-catalog` command line: run, query, render, diff, history, export, describe, make-concepts.

Only light modules are imported here: SIGINT and SIGTERM are handled from the first line of `main`,
before torch, Ray or pyarrow load (a Ctrl-C at any moment is one line and exit code 130), and each
subcommand imports what it needs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import UserError
from pipeline.interrupts import Interrupted, stop_on_signals

if TYPE_CHECKING:  # types only: pandas loads with the subcommand that needs it
    import pandas as pd


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neuron-catalog", description="Catalog every unit of a vision model.")
    verbs = parser.add_subparsers(dest="verb", required=True)

    run = verbs.add_parser("run", help="run a job file and write its catalog")
    run.add_argument("job", type=Path, help="job file (TOML)")
    run.add_argument("--address", default=None, help="Ray cluster address (default: [ray] address, RAY_ADDRESS, else a local Ray)")
    run.add_argument("--out", type=Path, default=None, help="catalog directory (default: [output] catalog)")
    run.add_argument("--stages", default=None,
                     help="comma-separated stages to run, with the stages they need (activations, featvis, dissection, "
                          "...; an unknown name is refused with the full list)")
    run.add_argument("--previous", default=None,
                     help="a previous catalog to reuse unchanged results from, or 'latest' (default: the job's `previous`)")

    query = verbs.add_parser("query", help="print units of a catalog")
    query.add_argument("catalog", type=Path)
    query.add_argument("--layer")
    query.add_argument("--label", help="text in the unit's concept label or one of its synonyms (case-insensitive)")
    query.add_argument("--category", help="only units whose concept is of this category (color, object, ...)")
    query.add_argument("--similar-to", metavar="LAYER:UNIT",
                       help="the unit's nearest units found by the similarity stage, instead of a list of units")
    query.add_argument("--inputs-of", metavar="LAYER:UNIT",
                       help="the unit's strongest inputs in the layer before (connections stage), excitatory first")
    query.add_argument("--outputs-of", metavar="LAYER:UNIT",
                       help="the unit's strongest outputs in the layer after (connections stage), excitatory first")
    query.add_argument("--min-iou", type=float)
    query.add_argument("--sort", help="column to sort by, largest first")
    query.add_argument("--ascending", action="store_true", help="sort smallest first")
    query.add_argument("--limit", type=int)
    query.add_argument("--format", choices=["table", "csv", "json"], default="table")

    render = verbs.add_parser("render", help="write a catalog as an offline static site")
    render.add_argument("catalog", type=Path)
    render.add_argument("--out", type=Path, required=True, help="site directory (a site already there is replaced)")
    render.add_argument("--workers", type=int, default=0, help="processes writing pictures (default: one per CPU)")
    render.add_argument("--diff", type=Path, default=None,
                        help="an earlier catalog (or a `diff --out` Parquet file): add a page of what changed since")

    diff = verbs.add_parser("diff", help="compare two catalogs unit by unit (e.g. before and after retraining)")
    diff.add_argument("old", type=Path, help="the earlier catalog")
    diff.add_argument("new", type=Path, help="the later catalog")
    diff.add_argument("--out", type=Path, default=None, help="write the per-unit comparison as a Parquet file")
    diff.add_argument("--match", default="auto", choices=["auto", "index", "correlation"],
                      help="pair units by number, or one-to-one by activation correlation (retrained from scratch); "
                           "auto: by number unless their activations no longer correlate")
    diff.add_argument("--limit", type=int, default=10, help="changed units listed on the terminal")

    _history_and_export(verbs)

    describe = verbs.add_parser("describe", help="summarize a catalog")
    describe.add_argument("catalog", type=Path)

    concepts = verbs.add_parser("make-concepts", help="write the procedural concept world in Broden format")
    concepts.add_argument("out", type=Path)
    concepts.add_argument("--images", type=int, default=600)
    concepts.add_argument("--size", type=int, default=64)
    concepts.add_argument("--seed", type=int, default=0)
    return parser


def _history_and_export(verbs: argparse._SubParsersAction) -> None:
    history = verbs.add_parser("history", help="follow every unit through a series of catalogs (checkpoints, re-analyses)")
    history.add_argument("catalogs", type=Path, nargs="+",
                         help="a catalog history folder ([output] history = true), or catalogs oldest first")
    history.add_argument("--out", type=Path, default=None,
                         help="evolution.parquet to write (default: inside the history folder)")
    history.add_argument("--site", type=Path, default=None, help="also render every run and an evolution page here")
    history.add_argument("--match", default="auto", choices=["auto", "index", "correlation"], help="as for diff")

    export = verbs.add_parser("export", help="write every table of a catalog as CSV or JSON Lines files")
    export.add_argument("catalog", type=Path)
    export.add_argument("--format", choices=["csv", "jsonl"], default="csv")
    export.add_argument("--out", type=Path, required=True, help="directory for the files (created when missing)")


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; the exit code: 0, 2 for a mistake in the input, 128 + N when stopped by signal N."""
    try:
        with stop_on_signals():
            return _dispatch(get_args_parser().parse_args(argv))
    except Interrupted as exc:
        print(f"neuron-catalog: interrupted ({exc}): {exc.summary or 'stopped before it finished'}",
              file=sys.stderr)
        return exc.exit_code


def _dispatch(args: argparse.Namespace) -> int:
    from catalog_schema import CatalogError

    try:
        return {"run": _run, "query": _query, "render": _render, "describe": _describe, "diff": _diff,
                "history": _history, "export": _export, "make-concepts": _make_concepts}[args.verb](args)
    except (UserError, CatalogError) as exc:  # a bad job, input or catalog: the message names it and the fix
        print(f"neuron-catalog: error: {exc}", file=sys.stderr)
        return 2


def _open(path: Path):
    from catalog_schema import Catalog

    return Catalog.open(path)


def _run(args: argparse.Namespace) -> int:
    from pipeline.job.load import load_job
    from pipeline.run import run_job
    from pipeline.registry import STAGES

    stages = None
    if args.stages:
        stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
        bad = [s for s in stages if s not in STAGES]
        if bad:
            raise UserError(f"--stages: unknown stage(s) {', '.join(bad)}; stages are {', '.join(STAGES)}.")
    job = load_job(args.job, STAGES)
    result = run_job(job, address=args.address, out=args.out, stages=stages, previous=args.previous)
    s, data = result.manifest["summary"], result.manifest["data"]
    print(f"catalog written: {result.catalog}")
    print(f"  layers {s['layers']}, units {s['units']}, dead units {s['dead_units']}")
    left_out = result.manifest["layers_left_out"]
    if left_out:
        print(f"  left out {len(left_out)} module(s) of the default selection whose units are not read "
              f"(manifest.json 'layers_left_out' says why), e.g. {left_out[0]['name']}")
    print(f"  images used {data['used']} of {data['images']}, skipped {len(data['skipped'])}")
    if "concepts" in result.manifest:
        c = result.manifest["concepts"]
        print(f"  dissection: {s['interpretable_units']} interpretable units, {s['unique_concepts']} distinct concepts; "
              f"concept images used {c['used']} of {c['images']}, skipped {len(c['skipped'])}")
    reuse = result.manifest["reuse"]
    if reuse["previous"]:
        done = [(stage, layer, r["action"]) for stage, layers in reuse["stages"].items() for layer, r in layers.items()]
        kept = sum(action == "reused" for *_, action in done)
        print(f"  re-analysis of {reuse['previous']}: {kept} of {len(done)} (stage, layer) results reused, "
              f"{len(done) - kept} computed (manifest.json 'reuse' says why)")
    if result.shards_reused:
        print(f"  resumed: {result.shards_reused} shard(s) reused from the interrupted run, {result.shards_computed} computed")
    if result.parts_reused:
        print("  resumed also: " + ", ".join(f"{n} {kind}" for kind, n in result.parts_reused.items()))
    print("  wall time: " + ", ".join(f"{step} {secs:.1f} s" for step, secs in result.seconds.items())
          + f"; total {sum(result.seconds.values()):.1f} s")
    print(f"  try: neuron-catalog describe {result.catalog}")
    return 0


def _query(args: argparse.Namespace) -> int:
    from pipeline.catalog.query import (CONNECTION_COLUMNS, NEIGHBOUR_COLUMNS, connected_to, format_units, query_units,
                                        similar_to)

    catalog = _open(args.catalog)
    for direction, spec in (("input", args.inputs_of), ("output", args.outputs_of)):
        if spec is not None:
            side = "before" if direction == "input" else "after"
            return _related(connected_to(catalog, spec, direction), args, CONNECTION_COLUMNS,
                            f"{spec} has no {direction}s: no cataloged layer {side} it, or none that it reads or feeds.")
    if args.similar_to is not None:
        return _related(similar_to(catalog, args.similar_to), args, NEIGHBOUR_COLUMNS,
                        f"{args.similar_to} has no neighbours: its activations do not vary on the probe images (a dead "
                        "unit), and its layer has no weights of its own or its weights are all zero.")
    units = query_units(catalog, args.layer, args.label, args.min_iou, args.sort, args.ascending, args.limit,
                        args.category)
    print(format_units(units, args.format))
    return 0


def _related(rows: pd.DataFrame, args: argparse.Namespace, columns: list[str], empty: str) -> int:
    """Print a unit's related units (neighbours, connections), or `empty` when a table has none to show."""
    from pipeline.catalog.query import format_units

    print(empty if rows.empty and args.format == "table" else
          format_units(rows.head(args.limit) if args.limit else rows, args.format, columns))
    return 0


def _render(args: argparse.Namespace) -> int:
    from pipeline.render import render_site

    catalog = _open(args.catalog)
    diff = None
    if args.diff is not None:
        from pipeline.catalog.diff import diff_catalogs, read_diff

        if args.diff.is_file():
            diff = (args.diff.name, read_diff(args.diff))
        else:
            old = _open(args.diff)
            diff = (str(args.diff), diff_catalogs(old, catalog).units)
    summary = render_site(catalog, args.out, args.workers or None, diff)
    print(f"site written: {summary.out} ({summary.pages} pages, {summary.images} images, "
          f"{summary.bytes / 2**20:.1f} MiB, {summary.seconds:.1f} s); open {summary.out / 'index.html'}")
    return 0


def _diff(args: argparse.Namespace) -> int:
    from pipeline.catalog.diff import diff_catalogs, format_summary, write_diff

    old, new = _open(args.old), _open(args.new)
    result = diff_catalogs(old, new, args.match)
    print(format_summary(result, old, new, args.limit))
    if args.out is not None:
        write_diff(result, args.out)
        print(f"\nper-unit comparison written: {args.out}")
    return 0


def _history(args: argparse.Namespace) -> int:
    from pipeline.catalog.evolution import evolution, history_catalogs, write_evolution

    catalogs = history_catalogs(args.catalogs)
    out = args.out
    if out is None:
        if len(args.catalogs) > 1:
            raise UserError("history: give --out FILE.parquet when the catalogs are listed one by one.")
        out = args.catalogs[0] / "evolution.parquet"
    table = evolution(catalogs, args.match)
    write_evolution(table, out)
    last = table[table["run"] == table["run"].max()]
    print(f"evolution of {last['unit'].size} units over {len(catalogs)} runs written: {out}")
    for run, rows in table.groupby("run"):
        print(f"  run {run} {rows['run_name'].iloc[0]}: {int(rows['label'].notna().sum())} interpretable units, "
              f"{rows['label'].nunique()} concepts, {int(rows['label_changed'].fillna(False).astype(bool).sum())} labels changed")
    if args.site is not None:
        from pipeline.render.evolution_page import render_history

        pages = render_history(catalogs, table, args.site)
        print(f"site written: {args.site} ({pages} pages); open {args.site / 'index.html'}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from pipeline.catalog.export import export_catalog

    files = export_catalog(_open(args.catalog), args.format, args.out)
    print(f"exported {len(files)} files to {args.out}: {', '.join(f.name for f in files)}")
    return 0


def _describe(args: argparse.Namespace) -> int:
    from pipeline.catalog.describe import describe

    print(describe(_open(args.catalog)))
    return 0


def _make_concepts(args: argparse.Namespace) -> int:
    from pipeline.concepts import make_concept_world

    for name in ("images", "size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(args, name)}.")
    summary = make_concept_world(args.out, images=args.images, size=args.size, seed=args.seed)
    print(f"concept world written: {args.out} ({summary.images} images, {summary.size}px)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
