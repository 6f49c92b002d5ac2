"""Write an evaluation report: metrics.json, report.md, a self-contained report.html and PNG plots.

Input is per-query metric vectors per run (queries aligned across runs), so every number in the report
comes with its sample size n, a 95% bootstrap interval, and, against a baseline, a paired test with Holm's
correction (`stats.compare_runs`).
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from seqbert.evaluation.ranking import EvalResult
from seqbert.evaluation.stats import bootstrap_cis, compare_runs


@dataclass(frozen=True)
class RunResult:
    per_query: dict[str, np.ndarray]  # metric -> (Q,) vector, queries aligned across runs
    extra: dict[str, float] = field(default_factory=dict)  # run-level numbers without a per-query vector
    metadata: dict[str, object] = field(default_factory=dict)  # shown verbatim (model, checkpoint, ...)


def _as_run_result(value: RunResult | EvalResult | Mapping[str, np.ndarray]) -> RunResult:
    if isinstance(value, RunResult):
        return value
    if isinstance(value, EvalResult):
        extra = {k: v for k, v in value.metrics.items() if k not in value.per_user}
        return RunResult(dict(value.per_user), extra, dict(value.settings))
    return RunResult({k: np.asarray(v, dtype=np.float64) for k, v in value.items()})


def _fmt(x: float) -> str:
    return "nan" if not np.isfinite(x) else f"{x:.4f}"


def _metric_key(name: str) -> tuple[str, int]:
    base, _, k = name.partition("@")
    return base, int(k) if k.isdigit() else 0


def _figure(width: float, height: float):
    """A matplotlib Figure drawn by the Agg canvas: files only, never a window, and the global pyplot
    backend is never switched (importing this module does not import matplotlib at all)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _plot_curves(runs: Mapping[str, RunResult], cis: Mapping, path: Path) -> bool:
    """One panel per metric family with >= 2 cut-offs: mean metric@K per run, 95% CI as error bars."""
    families: dict[str, list[int]] = {}
    names = next(iter(runs.values())).per_query
    for name in names:
        base, k = _metric_key(name)
        if k:
            families.setdefault(base, []).append(k)
    families = {b: sorted(ks) for b, ks in families.items() if len(ks) >= 2}
    if not families:
        return False
    cols = min(3, len(families))  # a grid, so five families do not make a 20-inch strip
    rows = -(-len(families) // cols)
    fig = _figure(4.2 * cols, 3.3 * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel()[len(families) :]:
        ax.set_visible(False)
    for ax, (base, ks) in zip(axes.ravel(), families.items()):
        for run in runs:
            ci = [cis[run][f"{base}@{k}"] for k in ks]
            mean = np.array([c.mean for c in ci])
            err = np.maximum(
                np.array([[c.mean - c.low for c in ci], [c.high - c.mean for c in ci]]), 0
            )  # fp noise
            ax.errorbar(ks, mean, yerr=err, marker="o", capsize=3, label=run)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("K")
        ax.set_title(f"{base}@K (n={ci[0].n})")
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("mean over queries (95% CI)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def _segment_table(runs: Mapping[str, RunResult], labels: np.ndarray, metric: str) -> dict[str, dict]:
    """label -> {"n": count, run: mean metric over the label's queries}, labels in sorted order."""
    out: dict[str, dict] = {}
    for label in sorted(set(labels.tolist()), key=lambda x: (str(type(x)), x)):
        where = labels == label
        out[str(label)] = {"n": int(where.sum())} | {
            r: float(res.per_query[metric][where].mean()) for r, res in runs.items()
        }
    return out


def _plot_segments(table: dict[str, dict], runs: Sequence[str], metric: str, title: str, path: Path) -> None:
    labels = list(table)
    width = 0.8 / len(runs)
    fig = _figure(max(4.5, 1.1 * len(labels) * max(1, len(runs) / 2)), 3.4)
    ax = fig.subplots()
    x = np.arange(len(labels))
    for i, run in enumerate(runs):
        ax.bar(x + (i - (len(runs) - 1) / 2) * width, [table[b][run] for b in labels], width, label=run)
    ax.set_xticks(x, [f"{b}\nn={table[b]['n']}" for b in labels], fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} by {title}")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(
    results: Mapping[str, RunResult | EvalResult | Mapping[str, np.ndarray]],
    out_dir: str | Path,
    baseline: str | None = None,
    segments: Mapping[str, np.ndarray] | None = None,
    segment_metric: str | None = None,
    title: str = "Ranking evaluation",
    test: str = "t",
    alpha: float = 0.05,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Path]:
    """Write metrics.json, report.md, report.html and PNGs into out_dir; return {name: path}.

    results: run name -> RunResult / EvalResult / {metric: (Q,) vector}; every run must cover the same Q
    queries in the same order. baseline: run the others are compared with (paired `test`, Holm-corrected
    per metric, "*" when p_holm < alpha). segments: segment name -> (Q,) labels (e.g. history-length
    bucket, target-popularity bucket, query group); one bar chart of `segment_metric` per segment.
    """
    runs = {name: _as_run_result(v) for name, v in results.items()}
    if not runs:
        raise ValueError("results is empty: pass at least one run")
    metric_names = list(next(iter(runs.values())).per_query)
    sizes = {r: {len(v) for v in res.per_query.values()} for r, res in runs.items()}
    for r, res in runs.items():
        if list(res.per_query) != metric_names or sizes[r] != sizes[next(iter(runs))] or len(sizes[r]) != 1:
            raise ValueError(
                f"run {r!r} must have the same metrics {metric_names} and query count as the others"
            )
    n = sizes[next(iter(runs))].pop()
    if baseline is not None and baseline not in runs:
        raise ValueError(f"baseline {baseline!r} is not one of the runs {list(runs)}")
    segment_metric = segment_metric or ("ndcg@10" if "ndcg@10" in metric_names else metric_names[0])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    level = 1 - alpha
    cis = {r: bootstrap_cis(res.per_query, n_resamples, level, seed) for r, res in runs.items()}
    comparisons = (
        compare_runs(
            {r: res.per_query for r, res in runs.items()},
            baseline,
            metric_names,
            test,
            alpha,
            n_resamples,
            seed,
        )
        if baseline and len(runs) > 1
        else []
    )
    seg_tables = {}
    for seg, labels in (segments or {}).items():
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise ValueError(f"segment {seg!r} has {labels.shape} labels; expected one per query ({n},)")
        seg_tables[seg] = _segment_table(runs, labels, segment_metric)

    paths: dict[str, Path] = {}
    if _plot_curves(runs, cis, out / "metric_at_k.png"):
        paths["metric_at_k.png"] = out / "metric_at_k.png"
    for i, (seg, table) in enumerate(seg_tables.items()):
        name = f"segment_{i}_{re.sub(r'[^a-z0-9]+', '_', seg.lower()).strip('_')}.png"
        _plot_segments(table, list(runs), segment_metric, seg, out / name)
        paths[name] = out / name

    payload = {
        "title": title,
        "settings": {
            "level": level,
            "n_resamples": n_resamples,
            "seed": seed,
            "test": test,
            "alpha": alpha,
            "baseline": baseline,
            "holm_family": "per metric",
        },
        "runs": {
            r: {
                "n": n,
                "metrics": {
                    m: {"mean": c.mean, "ci_low": c.low, "ci_high": c.high} for m, c in cis[r].items()
                },
                "extra": res.extra,
                "metadata": res.metadata,
            }
            for r, res in runs.items()
        },
        "comparisons": [asdict(c) for c in comparisons],
        "segments": {seg: {"metric": segment_metric, "groups": t} for seg, t in seg_tables.items()},
    }
    paths["metrics.json"] = out / "metrics.json"
    paths["metrics.json"].write_text(json.dumps(payload, indent=2, default=str))

    # tables: metrics as rows (there can be many), runs as columns
    pct = f"{level:.0%}"
    main_header = ["metric"] + [f"{r} (n={n})" for r in runs]
    main_rows = [
        [m] + [f"{_fmt(cis[r][m].mean)} [{_fmt(cis[r][m].low)}, {_fmt(cis[r][m].high)}]" for r in runs]
        for m in metric_names
    ]
    extras = sorted({k for res in runs.values() for k in res.extra})
    main_rows += [[k] + [_fmt(runs[r].extra.get(k, float("nan"))) for r in runs] for k in extras]
    sections = [
        (
            "Metrics",
            f"Mean over n={n} queries with {pct} percentile-bootstrap intervals ({n_resamples} resamples, seed {seed}).",
            main_header,
            main_rows,
        )
    ]
    if comparisons:
        others = [r for r in runs if r != baseline]
        by = {(c.metric, c.run): c for c in comparisons}
        cmp_header = ["metric"] + [f"{r} − {baseline} (n={n})" for r in others]
        cmp_rows = [
            [m]
            + [
                f"{by[m, r].diff:+.4f} [{by[m, r].diff_low:+.4f}, {by[m, r].diff_high:+.4f}] p={by[m, r].p_value:.3g} p_holm={by[m, r].p_holm:.3g}{' *' if by[m, r].significant else ''}"
                for r in others
            ]
            for m in metric_names
        ]
        text = (
            f"Paired {'t-test' if test == 't' else 'Wilcoxon signed-rank test'} per metric against **{baseline}**, "
            f"Holm-corrected across the {len(others)} comparison(s) of each metric; * = p_holm < {alpha}. "
            f"Difference intervals: {pct} bootstrap of the per-query difference."
        )
        sections.append((f"Comparison with {baseline}", text, cmp_header, cmp_rows))
    for seg, table in seg_tables.items():
        header = [seg, "n"] + list(runs)
        rows = [[label, str(v["n"])] + [_fmt(v[r]) for r in runs] for label, v in table.items()]
        sections.append(
            (
                f"{segment_metric} by {seg}",
                f"Mean {segment_metric} per group; n = queries in the group.",
                header,
                rows,
            )
        )
    meta_lines = [
        f"- **{r}**: " + ", ".join(f"{k}={v}" for k, v in res.metadata.items())
        for r, res in runs.items()
        if res.metadata
    ]

    md = [f"# {title}", ""] + (meta_lines + [""] if meta_lines else [])
    for head, text, header, rows in sections:
        md += [f"## {head}", "", text, "", _md_table(header, rows), ""]
    md += [f"![{p}]({p})" for p in paths if p.endswith(".png")]
    paths["report.md"] = out / "report.md"
    paths["report.md"].write_text("\n".join(md) + "\n")

    style = "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px;text-align:left}img{max-width:100%}"
    body = [f"<h1>{html.escape(title)}</h1>"] + [
        f"<p>{html.escape(line[2:]).replace('**', '')}</p>" for line in meta_lines
    ]
    for head, text, header, rows in sections:
        body += [
            f"<h2>{html.escape(head)}</h2>",
            f"<p>{html.escape(text).replace('**', '')}</p>",
            _html_table(header, rows),
        ]
    for p in [p for p in paths if p.endswith(".png")]:
        data = base64.b64encode(paths[p].read_bytes()).decode()
        body.append(
            f'<h3>{html.escape(p)}</h3><img alt="{html.escape(p)}" src="data:image/png;base64,{data}">'
        )
    paths["report.html"] = out / "report.html"
    paths["report.html"].write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )
    return paths
