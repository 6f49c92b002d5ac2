"""The `seqbert` command: train, recommend, evaluate, data, pipeline, text.

Every subcommand registers itself with `set_defaults(func=...)`; `main` runs it under one error policy: an
expected error (a bad config or value, missing data, a bad id, a corrupt model file, a run directory in use)
is one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from seqbert.config import ConfigError
from seqbert.data.cli import add_data_parser
from seqbert.evaluation.cli import add_evaluate_parser
from seqbert.pipeline import add_pipeline_parser
from seqbert.training.checkpoint import CheckpointError

EXPECTED_ERRORS = (ConfigError, KeyError, ValueError, FileNotFoundError, NotADirectoryError, CheckpointError)


def add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train any task from a YAML config (its `job:` names the task)")
    p.add_argument("config", help="a YAML config, e.g. recipes/sasrec_ml1m.yaml")
    p.add_argument("--out", required=True, help="the run directory (created; a rerun resumes it)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--data-dir", default=None, help="raw data directory (default: $SEQBERT_DATA_DIR)")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from seqbert.jobs import run_job

    run_job(args.config, args.out, args.set, args.data_dir)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from seqbert import __version__
    from seqbert.malloc import active_allocator
    from seqbert.recommender import add_recommend_parser

    parser = argparse.ArgumentParser(prog="seqbert", description=__doc__)
    parser.add_argument(
        "--version", action="version", version=f"seqbert {__version__} (allocator: {active_allocator()})"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    add_recommend_parser(sub)
    add_evaluate_parser(sub)
    add_data_parser(sub)
    add_pipeline_parser(sub)
    try:
        from seqbert.text_model import add_text_parsers
    except ImportError:  # text extras missing: the other commands still work
        add_text_parsers = None
    if add_text_parsers is not None:
        add_text_parsers(sub)
    return parser


def _message(error: BaseException) -> str:
    # KeyError's str() is the repr of its argument: show the message itself
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EXPECTED_ERRORS as e:
        sys.stderr.write(f"seqbert {args.command}: error: {_message(e)}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"seqbert {args.command}: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
