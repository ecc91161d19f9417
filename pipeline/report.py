"""Stage reports: counts kept / rejected / errored, rejection reasons, error types and
PNG histograms, written next to the stage manifest (``_report.json``, ``_report.md``,
``<column>_hist.png``) and returned as Markdown for a Prefect artifact."""
from __future__ import annotations

import io
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.manifest import DONE, load_manifest
from pipeline.storage import part_name


def _columns(pipeline, stage, parts: list[int], sub: str, columns: list[str]) -> pa.Table | None:
    tables = []
    sdir = pipeline.stage_dir(stage.name)
    for k in parts:
        path = f"{sdir}/{sub}{part_name(k)}"
        if pipeline.storage.exists(path):
            t = pipeline.storage.read_table(path)
            tables.append(t.select([c for c in columns if c in t.column_names]))
    return pa.concat_tables(tables, promote_options="default") if tables else None


def _histogram_png(values: np.ndarray, label: str, title: str) -> bytes:
    # Figure + Agg canvas, not pyplot: reports render in task threads, and pyplot's global
    # figure registry is not thread-safe
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.hist(values, bins=min(50, max(5, int(np.sqrt(len(values))))), color="#3b6ea8", edgecolor="white")
    ax.set_xlabel(label)
    ax.set_ylabel("count")
    ax.set_title(f"{title} (n={len(values)}, median={np.median(values):.2f})")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def build_report(pipeline, stage_name: str) -> dict[str, Any]:
    """Summarise a stage from its manifest and part files and write the report files.

    Returns the report as a dict with a ``markdown`` key.
    """
    stage = pipeline.stage(stage_name)
    index = pipeline.stages.index(stage)
    sdir = pipeline.stage_dir(stage_name)
    manifest = load_manifest(pipeline.storage, sdir, stage_name)
    states = pipeline.part_states(index, manifest)
    done = sorted(k for k, s in states.items() if s == DONE)
    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    seconds = 0.0
    for k in done:
        e = manifest.entry(k)
        counts.update(e.counts)
        reasons.update(e.reasons)
        seconds += e.seconds
    errors: Counter[str] = Counter()
    err_examples: dict[str, str] = {}
    et = _columns(pipeline, stage, done, "_errors/", ["error_type", "message", "item_key"])
    if et is not None:
        for row in et.to_pylist():
            errors[row["error_type"]] += 1
            err_examples.setdefault(row["error_type"], f"{row['item_key']}: {row['message'][:200]}")
    report: dict[str, Any] = {
        "stage": stage_name, "parts_done": len(done), "parts_total": len(states),
        "parts_failed": sorted(k for k, s in states.items() if s == "failed"),
        "counts": dict(counts), "rejection_reasons": dict(reasons.most_common()),
        "error_types": dict(errors.most_common()), "error_examples": err_examples,
        "worker_seconds": round(seconds, 2), "histograms": {},
    }
    hists = stage.report_histograms
    need = sorted({c for h in hists.values() for c in h.columns})
    t = _columns(pipeline, stage, done, "", need) if hists else None
    for col, h in hists.items():
        if t is None or not set(h.columns) <= set(t.column_names):
            continue
        arr = h.compute(t) if h.compute else t[h.columns[0]]
        values = np.asarray(arr.drop_null().to_numpy(zero_copy_only=False), dtype=float)
        values = values[np.isfinite(values)]
        if len(values) == 0:
            continue
        name = f"{col}_hist.png"
        pipeline.storage.write_bytes(f"{sdir}/{name}", _histogram_png(values, h.label, f"{stage_name}: {col}"))
        report["histograms"][col] = {"png": pipeline.storage.url_of(f"{sdir}/{name}"), "n": int(len(values)),
                                     "min": float(values.min()), "median": float(np.median(values)),
                                     "max": float(values.max())}
    section = pipeline.instantiate(stage).report_section(done) if done else None
    if section:
        report["stage_section"] = section
    report["markdown"] = to_markdown(report)
    pipeline.storage.write_json(f"{sdir}/_report.json", {k: v for k, v in report.items() if k != "markdown"})
    pipeline.storage.write_bytes(f"{sdir}/_report.md", report["markdown"].encode())
    return report


def to_markdown(r: dict[str, Any]) -> str:
    c = r["counts"]
    lines = [f"# Stage `{r['stage']}`", "",
             f"Parts done: {r['parts_done']}/{r['parts_total']}" + (f", failed: {r['parts_failed']}" if r["parts_failed"] else ""),
             "", "| input | kept | rejected | errors |", "|---:|---:|---:|---:|",
             f"| {c.get('input', 0)} | {c.get('kept', 0)} | {c.get('rejected', 0)} | {c.get('errors', 0)} |", ""]
    if r["rejection_reasons"]:
        lines += ["## Rejection reasons", "", "| reason | count |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in r["rejection_reasons"].items()] + [""]
    if r["error_types"]:
        lines += ["## Errors", "", "| type | count | example |", "|---|---:|---|"]
        lines += [f"| {k} | {v} | {r['error_examples'].get(k, '').replace('|', '/')} |" for k, v in r["error_types"].items()]
        lines += [""]
    for col, h in r["histograms"].items():
        lines += [f"## {col}", "", f"n={h['n']}, min={h['min']:.2f}, median={h['median']:.2f}, max={h['max']:.2f}", "",
                  f"![{col}]({h['png']})", ""]
    if (r.get("stage_section") or {}).get("markdown"):
        lines += [r["stage_section"]["markdown"], ""]
    return "\n".join(lines)
