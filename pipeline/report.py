"""Reports. Per stage: counts kept / rejected / errored, rejection reasons, error types and
PNG histograms, written next to the stage manifest (``_report.json``, ``_report.md``,
``<column>_hist.png``). Per build: a timeline of every part of every stage and each stage's
busy time, idle time and throughput (``<corpus>/_build/``). Both return Markdown for a
Prefect artifact."""
from __future__ import annotations

import io
from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.manifest import DONE, load_manifest
from pipeline.storage import part_name


def _columns(pipeline, stage, parts: list[int], sub: str, columns: list[str]) -> pa.Table | None:
    tables = []
    sdir = pipeline.stage_dir(stage.name)
    for k in parts:
        path = f"{sdir}/{sub}{part_name(k)}"
        if pipeline.storage.exists(path):
            # only the columns asked for: a part's words lists are most of its bytes
            with pipeline.storage.open(path) as f:
                pf = pq.ParquetFile(f)
                tables.append(pf.read(columns=[c for c in columns if c in pf.schema_arrow.names]))
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
    states = pipeline.part_states(index)
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


def timeline_report(pipeline, run) -> dict[str, Any]:
    """Where a build's time went: one row per stage with a bar per part (``timeline.png``), and
    per stage its parts run, busy time (the union of its parts' intervals, s), idle time (the
    build's wall time minus busy, s) and throughput (input items per busy second). Written to
    ``<corpus>/_build/report.md|.json`` and ``timeline.png``; returned with a ``markdown`` key
    (the PNG inlined as a data URI, for a Prefect artifact)."""
    import base64

    wall = max(1e-9, run.finished_at - run.started_at)
    rows = []
    for name, sr in run.stages.items():
        spans = sorted((t["start"], t["end"]) for t in run.timeline if t["stage"] == name)
        busy, cur_a, cur_b = 0.0, None, None
        for a, b in spans:
            if cur_b is None or a > cur_b:
                busy += 0.0 if cur_b is None else cur_b - cur_a
                cur_a, cur_b = a, b
            else:
                cur_b = max(cur_b, b)
        busy += 0.0 if cur_b is None else cur_b - cur_a
        items = sum(t["items"] for t in run.timeline if t["stage"] == name)
        rows.append({"stage": name, "parts_run": len(sr.ran), "parts_skipped": len(sr.skipped),
                     "parts_failed": len(sr.failed), "parts_blocked": len(sr.blocked),
                     "busy_s": round(busy, 2), "idle_s": round(max(0.0, wall - busy), 2),
                     "items_per_busy_s": round(items / busy, 2) if busy > 0 else None,
                     "first_start_s": round(spans[0][0] - run.started_at, 2) if spans else None,
                     "last_end_s": round(max(b for _, b in spans) - run.started_at, 2) if spans else None})
    png = _timeline_png(run)
    base = f"{pipeline.cfg.corpus}/_build"
    pipeline.storage.write_bytes(f"{base}/timeline.png", png)
    lines = [f"# Build of `{pipeline.cfg.corpus}`", "", f"Wall time {wall:.1f} s.", "",
             "| stage | parts run | skipped | failed | blocked | busy s | idle s | items / busy s | first start s | last end s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['parts_run']} | {r['parts_skipped']} | {r['parts_failed']} | "
                     f"{r['parts_blocked']} | {r['busy_s']} | {r['idle_s']} | {r['items_per_busy_s'] or '-'} | "
                     f"{r['first_start_s'] if r['first_start_s'] is not None else '-'} | "
                     f"{r['last_end_s'] if r['last_end_s'] is not None else '-'} |")
    report = {"wall_s": round(wall, 2), "stages": rows, "timeline_png": pipeline.storage.url_of(f"{base}/timeline.png")}
    parts = [{**t, "start": round(t["start"] - run.started_at, 3), "end": round(t["end"] - run.started_at, 3)}
             for t in run.timeline]
    pipeline.storage.write_json(f"{base}/report.json", {**report, "parts": parts})
    pipeline.storage.write_bytes(f"{base}/report.md", "\n".join(
        lines + ["", "![timeline](timeline.png)", ""]).encode())
    report["markdown"] = "\n".join(lines + ["", f"![timeline](data:image/png;base64,{base64.b64encode(png).decode()})", ""])
    return report


def _timeline_png(run) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(run.stages)
    fig = Figure(figsize=(9, 0.45 * len(names) + 1.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = ["#3b6ea8", "#d08c2f"]
    for row, name in enumerate(names):
        bars = [(t["start"] - run.started_at, t["end"] - t["start"], t["part"])
                for t in run.timeline if t["stage"] == name]
        for x, w, part in bars:
            ax.broken_barh([(x, max(w, 1e-3))], (row - 0.4, 0.8), facecolors=colors[part % 2], edgecolor="white",
                           linewidth=0.3)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the build started")
    ax.set_title("parts of each stage over time (alternating colours: consecutive parts)")
    ax.set_xlim(0, max(1e-3, run.finished_at - run.started_at))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
