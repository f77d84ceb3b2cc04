"""What ``profile`` writes: profile.json and profile.csv (after every cell), profile.md and profile.png, and the
headline ratios."""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path
from typing import Any

from fsdistill.runtime import write_atomic

__all__ = ["CSV_COLUMNS", "headline_ratios", "render_markdown"]

CSV_COLUMNS = (
    "model",
    "ways",
    "shots",
    "status",
    "p50_ms",
    "p95_ms",
    "mean_ms",
    "min_ms",
    "throughput",
    "peak_mem_mb",
    "over_backbone",
    "params",
    "weights_mb",
    "support_cache_mb",
    "supports",
    "voting",
    "warmup",
    "runs",
    "note",
)


def headline_ratios(
    rows: list[dict[str, Any]], ways: int, shots: int, teacher_ways: int | None = None
) -> dict[str, Any]:
    """The paper's three headline ratios (p50 latencies; None where a value is missing), and per-ways figures.

    - ``student_max_over_min``: slowest / fastest student cell over the whole grid.
    - ``teacher_over_student``: teacher / student at ``teacher_cell``, the largest cell the teacher was timed in.
    - ``student_over_backbone``: student / bare backbone at the largest cell, the median over its rounds of the
      two back-to-back runs' ratio (a student row's ``over_backbone``; rows without it: the ratio of the two
      medians); also the worst cell (``student_over_backbone_max``).
    - ``student_paired_max_over_min``: max / min over the grid of each cell's student / backbone ratio: the
      student's flatness with the machine's speed drift between cells divided out.
    - ``student_over_backbone_by_ways``: per ways value (a string key, as in JSON), the median over its shots
      cells of the paired student / backbone ratio.
    - ``peak_mem_mb_largest_cell``: peak memory (MB) of each model in the largest cell (the teacher's in
      ``teacher_cell``).
    """

    def p50(model: str, w: int, s: int | None = None) -> float | None:
        for r in rows:
            if r["model"] == model and r["ways"] == w and (s is None or r["shots"] == s) and r["status"] == "ok":
                return r["p50_ms"]
        return None

    def peak(model: str, w: int, s: int) -> float | None:
        return next((r.get("peak_mem_mb") for r in rows if (r["model"], r["ways"], r["shots"]) == (model, w, s)), None)

    t_ways = ways if teacher_ways is None else min(ways, teacher_ways)
    students = [r for r in rows if r["model"] == "student" and r["status"] == "ok"]
    lat = [r["p50_ms"] for r in students]
    teacher = p50("teacher", t_ways, shots)
    by_cell = {(r["model"], r["ways"], r["shots"]): r for r in rows}
    paired = {
        (r["ways"], r["shots"]): x
        for r in students
        if (x := _student_over_backbone(r, by_cell.get(("backbone", r["ways"], r["shots"])))) is not None
    }
    per_cell = list(paired.values())
    by_ways: dict[str, float] = {}
    for w in sorted({r["ways"] for r in students}):
        cells = sorted(x for (cw, _), x in paired.items() if cw == w)
        if cells:
            by_ways[str(w)] = round(statistics.median(cells), 3)
    ratio = lambda a, b: round(a / b, 3) if a is not None and b else None  # noqa: E731
    largest = paired.get((ways, shots))
    return {
        "largest_cell": {"ways": ways, "shots": shots},
        "teacher_cell": {"ways": t_ways, "shots": shots} if t_ways >= 1 else None,
        "student_max_over_min": ratio(max(lat), min(lat)) if lat else None,
        "teacher_over_student": ratio(teacher, p50("student", t_ways, shots)),
        "student_over_backbone": None if largest is None else round(largest, 3),
        "student_over_backbone_max": round(max(per_cell), 3) if per_cell else None,
        "student_paired_max_over_min": round(max(per_cell) / min(per_cell), 3) if per_cell else None,
        "student_over_backbone_by_ways": by_ways,
        "peak_mem_mb_largest_cell": {
            "teacher": peak("teacher", t_ways, shots),
            "student": peak("student", ways, shots),
            "backbone": peak("backbone", ways, shots),
        },
    }


def _write_tables(out: Path, data: dict[str, Any]) -> dict[str, Path]:
    """profile.json and profile.csv (written after every cell, so an interrupted profile keeps its rows)."""
    files = {"json": write_atomic(out / "profile.json", json.dumps(data, indent=2, allow_nan=False) + "\n")}
    buf = io.StringIO()
    extra = sorted({k for r in data["rows"] for k in r} - set(CSV_COLUMNS))
    writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS) + extra, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in data["rows"]:
        writer.writerow({k: ("" if v is None else v) for k, v in r.items()})
    files["csv"] = write_atomic(out / "profile.csv", buf.getvalue())
    return files


def _cell(rows: dict, model: str, w: int, s: int) -> tuple[str, str]:
    r = rows.get((model, w, s))
    if r is None:
        return "–", "–"
    if r["status"] != "ok":
        return r["status"].upper(), f"{r['peak_mem_mb']:,.0f}+"
    return f"{r['p50_ms']:,.1f}", f"{r['peak_mem_mb']:,.0f}"


def _p50_ratio(a: dict | None, b: dict | None) -> float | None:
    """The p50 ratio a / b of two rows of one cell, or None when either is missing or failed."""
    if a and b and a["status"] == "ok" and b["status"] == "ok" and b["p50_ms"]:
        return a["p50_ms"] / b["p50_ms"]
    return None


def _student_over_backbone(student: dict | None, backbone: dict | None) -> float | None:
    """A cell's student / bare backbone: the student row's paired ``over_backbone`` (the median over the cell's
    rounds of its two back-to-back runs), or for rows without it the ratio of the two medians; None when either
    row is missing or failed."""
    of_medians = _p50_ratio(student, backbone)
    return None if of_medians is None else student.get("over_backbone") or of_medians


def _times_text(ratio: float | None, digits: int) -> str:
    """A ratio as ``1.5×``, or ``–`` when there is none."""
    return "–" if ratio is None else f"{ratio:,.{digits}f}×"


def render_markdown(data: dict[str, Any]) -> str:
    """The paper-style table: rows ways × shots, teacher/student/backbone ms and MB, then the headline ratios."""
    rows = {(r["model"], r["ways"], r["shots"]): r for r in data["rows"]}
    v = data["versions"]
    lines = [
        f"# fsdistill profile: {data['backbone']} at {data['size']} px",
        "",
        f"- device: {data['device']}, {data['threads']} torch threads ({data['cpu_count']} CPUs visible)",
        f"- versions: torch {v['torch']}, timm {v['timm']}, fsdistill {v['fsdistill']}, python {v['python']}",
        f"- weights: {data['weights']}; batch size {data['batch_size']} (the teacher runs queries one at a time); "
        f"support features {'cached (computed once, as in real use)' if data['cache'] else 'recomputed for every query (--no-cache)'}",
        f"- timing: {data['timing']}; {data['timing_policy']}",
        f"- memory: {data['memory_method']}",
        f"- load average (1/5/15 min) at start: {data.get('load_average_start')}, at end: "
        f"{data.get('load_average_end')}{_load_note(data)}",
        "- latency = median (p50) ms per run of one batch; memory = peak MB; "
        "student and backbone runs alternate within a cell",
        f"- memory layout: student and backbone {_pair_layout(data)} (as predict runs the student), teacher default",
        "",
        (
            f"- teacher timed up to {max(data['teacher_ways'])} ways (`--teacher-max-ways` "
            f"{data.get('teacher_max_ways')}); student and backbone in every cell"
            if data.get("teacher_ways")
            else "- teacher not timed (`--teacher-max-ways` below the ways, or no teacher in the run); student and "
            "backbone in every cell"
        ),
        "",
        "| ways | shots | teacher ms | teacher MB | student ms | student MB | backbone ms | backbone MB "
        "| teacher / student | student / backbone |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for w in data["grid"]["ways"]:
        for s in data["grid"]["shots"]:
            t_ms, t_mb = _cell(rows, "teacher", w, s)
            s_ms, s_mb = _cell(rows, "student", w, s)
            b_ms, b_mb = _cell(rows, "backbone", w, s)
            speedup = _times_text(_p50_ratio(rows.get(("teacher", w, s)), rows.get(("student", w, s))), 1)
            paired = _times_text(_student_over_backbone(rows.get(("student", w, s)), rows.get(("backbone", w, s))), 2)
            lines.append(f"| {w} | {s} | {t_ms} | {t_mb} | {s_ms} | {s_mb} | {b_ms} | {b_mb} | {speedup} | {paired} |")
    params = {}
    for x in data["rows"]:
        params[x["model"]] = max(params.get(x["model"], 0), x["params"])
    lines += [
        "",
        "Parameters (largest ways): " + ", ".join(f"{m} {n:,}" for m, n in params.items()),
        "",
        "## Headline ratios",
        "",
    ]
    r = data.get("ratios") or {}
    cell = r.get("largest_cell", {})
    t_cell = r.get("teacher_cell") or {}
    fmt = lambda x: "n/a" if x is None else f"{x:,.2f}×"  # noqa: E731
    lines += [
        f"- student latency max / min over the grid: {fmt(r.get('student_max_over_min'))} (per-cell student / "
        f"backbone, max / min: {fmt(r.get('student_paired_max_over_min'))}, the machine's drift divided out)",
        f"- teacher / student at {t_cell.get('ways')}-way {t_cell.get('shots')}-shot: "
        f"{fmt(r.get('teacher_over_student'))}"
        if t_cell
        else "- teacher: not timed (`--teacher-max-ways` below the ways, or no teacher in the run)",
        f"- student / bare backbone at {cell.get('ways')}-way: {fmt(r.get('student_over_backbone'))}"
        f" (worst cell {fmt(r.get('student_over_backbone_max'))})",
    ]
    by_ways = r.get("student_over_backbone_by_ways") or {}
    if by_ways:
        lines.append(
            "- student / bare backbone by ways (median over shots): "
            + ", ".join(f"{w}: {v:,.2f}×" for w, v in by_ways.items())
        )
    lines.append("")
    oom = [f"{x['model']} {x['ways']}w{x['shots']}s" for x in data["rows"] if x["status"] != "ok"]
    if oom:
        lines += [f"Out of memory: {', '.join(oom)} (MB column: the peak reached before it failed).", ""]
    if "seconds" in data:
        lines += [f"Profile wall time: {data['seconds']:,.0f} s.", ""]
    return "\n".join(lines)


def _load_note(data: dict[str, Any]) -> str:
    """A warning when the 1-minute load average exceeded the torch threads: other work shared the cores."""
    loads = [x[0] for x in (data.get("load_average_start"), data.get("load_average_end")) if x]
    if loads and max(loads) > data["threads"]:
        return " (above the thread count: other work shared the cores, so the timings are inflated)"
    return ""


def _pair_layout(data: dict[str, Any]) -> str:
    names = {r.get("memory_format") for r in data["rows"] if r["model"] in ("student", "backbone")}
    return ", ".join(sorted(n for n in names if n)) or "contiguous"


def _write_plot(path: Path, data: dict[str, Any]) -> Path:
    """Latency vs shots per ways value, log y: teacher solid, student dashed, bare backbone dotted."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), dpi=110)
    FigureCanvasAgg(fig)  # the Agg backend, without touching pyplot's global backend
    ax = fig.add_subplot(1, 1, 1)
    shots = data["grid"]["shots"]
    cmap = matplotlib.colormaps["viridis"]
    ways = data["grid"]["ways"]
    for i, w in enumerate(ways):
        color = cmap(i / max(1, len(ways) - 1) * 0.9)
        for model, style, marker in (("teacher", "-", "o"), ("student", "--", "s"), ("backbone", ":", "^")):
            pts = [
                (r["shots"], r["p50_ms"])
                for r in data["rows"]
                if r["model"] == model and r["ways"] == w and r["status"] == "ok"
            ]
            if pts:
                xs, ys = zip(*sorted(pts))
                ax.plot(xs, ys, style, marker=marker, color=color, label=f"{model} {w}-way", markersize=4)
    ax.set_yscale("log")
    if len(shots) > 1:
        ax.set_xscale("log")
    ax.set_xticks(shots)
    ax.set_xticklabels([str(s) for s in shots])
    ax.set_xticks([], minor=True)
    ax.set_xlabel("shots per class")
    ax.set_ylabel("latency p50 (ms per batch)")
    ax.set_title(f"{data['backbone']} {data['size']} px, {data['device']}, batch {data['batch_size']}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6, ncol=3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return write_atomic(path, buf.getvalue())
