"""`seqbert data ...`: fetch public interaction logs and prepare them into split sequence datasets.

    seqbert data fetch ml-1m --data-dir DIR
    seqbert data prepare ml-1m --data-dir DIR --out runs/data/ml-1m            # leave-one-out
    seqbert data prepare ml-100k --out OUT --split temporal --cutoff-quantile 0.9
    seqbert data prepare custom --interactions log.csv --user-col uid --item-col sku --time-col ts --out OUT
    seqbert data stats OUT

The data dir comes from --data-dir or $SEQBERT_DATA_DIR. No filtering is applied unless asked for: the
SASRec/BERT4Rec files are already filtered (ml-1m: items with < 5 ratings removed; beauty: 5-core).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import polars as pl

from seqbert.data import interactions as inter
from seqbert.data import sources
from seqbert.data.registry import DATASETS


def prepare(
    lf: pl.LazyFrame,
    source_files: list[Path],
    out_dir: str | Path,
    filters: inter.FilterConfig | None = None,
    split: str = "leave_one_out",
    cutoff: int | None = None,
    cutoff_quantile: float | None = None,
    name: str = "custom",
) -> dict:
    """Collect + filter + sequence + split a scanned log and save it to out_dir; returns the stats dict."""
    filters = filters or inter.FilterConfig()
    df = inter.collect_interactions(lf, ", ".join(str(p) for p in source_files), filters)
    seqs = inter.to_sequences(df)
    if split == "leave_one_out":
        if cutoff is not None or cutoff_quantile is not None:
            raise ValueError("--cutoff/--cutoff-quantile only apply to --split temporal")
        dataset = inter.leave_one_out(seqs)
    elif split == "temporal":
        if cutoff_quantile is not None:
            cutoff = inter.quantile_cutoff(seqs, cutoff_quantile) if cutoff is None else cutoff
        dataset = inter.temporal_split(seqs, cutoff=cutoff)
    else:
        raise ValueError(f"split must be 'leave_one_out' or 'temporal', got {split!r}")
    extra = {
        "name": name,
        "filters": dataclasses.asdict(filters),
        "split_args": {"cutoff": cutoff, "cutoff_quantile": cutoff_quantile},
        "raw_interactions_after_filters": df.height,
    }
    return inter.save_prepared(dataset, out_dir, source_files, extra)


def separator(text: str | None, path: Path) -> str:
    if text is None:
        return "\t" if path.suffix in (".tsv", ".tab") else ","
    return {"\\t": "\t", "tab": "\t", "space": " "}.get(text, text)


def add_data_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `data` with its subcommands to a parent parser's subparsers; returns the `data` parser."""
    data = subparsers.add_parser("data", help="fetch and prepare interaction datasets")
    data.set_defaults(func=run_data)
    sub = data.add_subparsers(dest="data_command", required=True)

    fetch = sub.add_parser("fetch", help="download a public dataset (sha256-checked)")
    fetch.add_argument("name", choices=sorted(sources.SOURCES))
    fetch.add_argument("--data-dir", default=None, help=f"default: ${sources.DATA_DIR_ENV}")
    fetch.add_argument("--force", action="store_true", help="download again even if the file exists")

    prep = sub.add_parser("prepare", help="log -> chronological sequences -> split -> OUT (parquet + json)")
    prep.add_argument("name", choices=[*DATASETS, "custom"])
    prep.add_argument("--out", required=True, type=Path, help="output directory")
    prep.add_argument("--data-dir", default=None, help=f"default: ${sources.DATA_DIR_ENV}")
    prep.add_argument("--interactions", type=Path, help="custom: CSV/TSV with a header, or parquet")
    prep.add_argument("--user-col", help="custom: user column")
    prep.add_argument("--item-col", help="custom: item column")
    prep.add_argument("--time-col", help="custom: timestamp column (epoch integer or ISO date-time)")
    prep.add_argument("--rating-col", help="custom: rating column")
    prep.add_argument(
        "--sep", help="custom: field separator (default ',' or tab for .tsv; '\\t' or 'tab' ok)"
    )
    prep.add_argument("--min-rating", type=float, help="keep interactions with rating >= this")
    prep.add_argument("--min-user-interactions", type=int, default=0, help="k-core, user side (iterative)")
    prep.add_argument("--min-item-interactions", type=int, default=0, help="k-core, item side (iterative)")
    prep.add_argument("--split", choices=["leave_one_out", "temporal"], default="leave_one_out")
    prep.add_argument("--cutoff", type=int, help="temporal: train < cutoff <= test (timestamp)")
    prep.add_argument("--cutoff-quantile", type=float, help="temporal: cutoff at this quantile of timestamps")

    stats = sub.add_parser("stats", help="print the stats.json of a prepared dataset (after checking it)")
    stats.add_argument("dir", type=Path)
    return data


def run_data(args: argparse.Namespace) -> int:
    """Run a parsed `data` command (expected errors are raised for the CLI's one error policy)."""
    if args.data_command == "fetch":
        path = sources.fetch(args.name, args.data_dir, force=args.force)
        print(f"{args.name}: {path}")
    elif args.data_command == "prepare":
        start = time.perf_counter()
        stats = _run_prepare(args)
        took = time.perf_counter() - start
        print(
            f"{args.name}: {stats['users']:,} users, {stats['items']:,} items, "
            f"{stats['interactions']:,} interactions, repeat rate {stats['repeat_rate']:.2%} -> {args.out} ({took:.1f}s)"
        )
    elif args.data_command == "stats":
        inter.load_prepared(args.dir)
        print(json.dumps(inter.load_stats(args.dir), indent=2))
    return 0


def _run_prepare(args: argparse.Namespace) -> dict:
    filters = inter.FilterConfig(args.min_rating, args.min_user_interactions, args.min_item_interactions)
    if args.name == "custom":
        for flag in ("interactions", "user_col", "item_col"):
            if getattr(args, flag) is None:
                raise ValueError(f"prepare custom needs --{flag.replace('_', '-')}")
        path = args.interactions
        lf = inter.scan_table(
            path, args.user_col, args.item_col, args.time_col, args.rating_col, separator(args.sep, path)
        )
    else:
        dataset = DATASETS[args.name]
        path = sources.locate(dataset.source, args.data_dir)
        lf = dataset.scan(path)
    return prepare(lf, [path], args.out, filters, args.split, args.cutoff, args.cutoff_quantile, args.name)
