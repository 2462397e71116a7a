"""`zhclip shards report OUT`: the funnel across stages as a chart, and a summary to read.

Reads OUT/report/{metadata,download,score}.json, whichever exist (each stage
writes its own shape: stage 1 and 3 a per-source funnel from pipeline.report,
stage 2 img2dataset-style success/failure counts), and the sidecars of
OUT/dataset (or OUT/downloads) for caption-length and score histograms.
Writes funnel.png, histograms.png, summary.md and summary.html. A missing or
malformed report is named in the summary and skipped, never fatal.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from typing import Any

from zhclip.pipeline.core import paths
from zhclip.pipeline.inspect.escape import markdown_text, terminal_safe
from zhclip.pipeline.shards import reader as src

REPORT_DIR = "report"
STAGE_FILES = ("metadata", "download", "score")
FUNNEL_PNG = "funnel.png"
HIST_PNG = "histograms.png"
SUMMARY_MD = "summary.md"
SUMMARY_HTML = "summary.html"
FUNNEL_SIZE_IN = (10.0, 5.0)
HIST_SIZE_IN = (12.0, 4.5)
DPI = 100
TOP_REASONS = 10
# The reject browser's index (`zhclip shards browse OUT --rejects`), relative to the summary.
REJECTS_PAGE = "rejects/index.html"


@dataclass
class FunnelStep:
    """One bar of the funnel: how many rows were still there after ``label``."""

    stage: str
    label: str
    count: int
    by_source: dict[str, int] = field(default_factory=dict)


@dataclass
class StageReasons:
    stage: str
    rejected: int
    reasons: dict[str, int]


def load_reports(out: str, problems: list[str]) -> dict[str, dict[str, Any]]:
    """{stage: parsed json} for each report present; unreadable ones go to ``problems``."""
    found = {}
    for stage in STAGE_FILES:
        uri = paths.join(out, REPORT_DIR, f"{stage}.json")
        if not paths.exists(uri):
            continue
        try:
            data = json.loads(paths.read_text(uri))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            found[stage] = data
        except (ValueError, UnicodeDecodeError, OSError) as err:
            problems.append(f"{uri}: unreadable ({err}); its stage is left out")
    return found


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _per_source(sources: Any, field_name: str) -> dict[str, int]:
    if not isinstance(sources, dict):
        return {}
    out = {}
    for name, counts in sources.items():
        n = _int(counts.get(field_name)) if isinstance(counts, dict) else None
        if n is not None:
            out[str(name)] = n
    return out


# (stage, count in the report's total/sources, label): every stage writes the one
# funnel shape of zhclip.pipeline.core.report, so one rule reads them all.
FUNNEL = (
    ("metadata", "rows_in", "rows read from sources"),
    ("metadata", "kept", "kept by caption/URL filters + dedup"),
    ("download", "kept", "downloaded and resized"),
    ("score", "kept", "final: scored, deduplicated, kept"),
)


def funnel_steps(reports: dict[str, dict[str, Any]], problems: list[str] | None = None) -> list[FunnelStep]:
    """The funnel, in stage order, from whichever reports hold the needed counts."""
    problems = problems if problems is not None else []
    steps: list[FunnelStep] = []
    for stage, field_name, label in FUNNEL:
        rep = reports.get(stage)
        if rep is None:
            continue
        total = rep.get("total") if isinstance(rep.get("total"), dict) else {}
        value = _int(total.get(field_name))
        if value is None:
            problems.append(f"report/{stage}.json: no total.{field_name}")
            continue
        steps.append(FunnelStep(stage, label, value, _per_source(rep.get("sources"), field_name)))
    return steps


def stage_reasons(reports: dict[str, dict[str, Any]]) -> list[StageReasons]:
    """Top reject reasons per stage (download failures by error class)."""
    out = []
    for stage in STAGE_FILES:
        rep = reports.get(stage)
        if rep is None or not isinstance(rep.get("total"), dict):
            continue
        total = rep["total"]
        reasons: dict[str, int] = {}
        if isinstance(total.get("reasons"), dict):
            reasons = {str(k): v for k, v in total["reasons"].items() if _int(v) is not None}
        top = dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_REASONS])
        out.append(StageReasons(stage, sum(reasons.values()), top))
    return out


# --- charts ---------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def funnel_figure(steps: list[FunnelStep]) -> Any:
    """Horizontal bars, first stage on top, stacked by source, each labelled with its count."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=FUNNEL_SIZE_IN, dpi=DPI)
    labels = [f"{s.stage}: {s.label}" for s in steps]
    ys = list(range(len(steps)))[::-1]
    sources = sorted({name for s in steps for name in s.by_source})
    colours = plt.get_cmap("tab10")
    for j, name in enumerate(sources):
        lefts = [sum(s.by_source.get(n, 0) for n in sources[:j]) for s in steps]
        widths = [s.by_source.get(name, 0) for s in steps]
        ax.barh(ys, widths, left=lefts, color=colours(j % 10), label=name, height=0.6)
    for y, s in zip(ys, steps, strict=True):
        unattributed = s.count - sum(s.by_source.values())
        if unattributed > 0 or not s.by_source:
            ax.barh([y], [max(unattributed, 0) or s.count], left=[sum(s.by_source.values())],
                    color="#bbbbbb", height=0.6, label="_nolegend_")
    first = steps[0].count if steps else 0
    for y, s in zip(ys, steps, strict=True):
        share = f" ({100 * s.count / first:.1f}%)" if first else ""
        ax.text(s.count, y, f" {s.count:,}{share}", va="center", ha="left", fontsize=9)
    ax.set_yticks(ys, labels)
    ax.set_xlabel("rows")
    ax.set_xlim(0, max([s.count for s in steps] + [1]) * 1.25)
    ax.set_title("zhclip funnel across stages")
    if sources:
        ax.legend(loc="lower right", fontsize=8, title="source")
    fig.tight_layout()
    return fig


def histogram_figure(stats: dict[str, Any] | None, score_report: dict[str, Any] | None) -> Any:
    """Caption length and score histograms (from the shards, else from score.json's histogram)."""
    plt = _pyplot()
    fig, (ax_cap, ax_score) = plt.subplots(1, 2, figsize=HIST_SIZE_IN, dpi=DPI)
    if stats:
        counts = stats["caption_length"]["histogram"]["counts"]
        ax_cap.bar(range(len(counts)), counts, width=1.0, color="#4c72b0")
        ax_cap.set_title(f"caption length ({stats['samples']:,} samples)")
    else:
        ax_cap.text(0.5, 0.5, "no shards found", ha="center", va="center", transform=ax_cap.transAxes)
        ax_cap.set_title("caption length")
    ax_cap.set_xlabel("characters")
    ax_cap.set_ylabel("samples")
    edges, counts = None, None
    if stats and stats["samples"] - stats["score"]["missing"] > 0:
        edges = stats["score"]["histogram"]["bin_edges"]
        counts = stats["score"]["histogram"]["counts"]
    elif score_report and isinstance(score_report.get("histogram"), dict):
        hist = score_report["histogram"]
        per_source = hist.get("counts") or {}
        if isinstance(per_source, dict) and per_source and hist.get("bin_edges"):
            edges = hist["bin_edges"]
            counts = [sum(v) for v in zip(*per_source.values(), strict=False)]
    if edges and counts:
        widths = [edges[i + 1] - edges[i] for i in range(len(counts))]
        ax_score.bar(edges[: len(counts)], counts, width=widths, align="edge", color="#dd8452")
        ax_score.set_title(f"score ({sum(counts):,} scored samples)")
    else:
        ax_score.text(0.5, 0.5, "no scores", ha="center", va="center", transform=ax_score.transAxes)
        ax_score.set_title("score")
    ax_score.set_xlabel("image-text similarity")
    fig.tight_layout()
    return fig


def _save(fig: Any, uri: str) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    _pyplot().close(fig)
    paths.write_bytes_atomic(uri, buf.getvalue())


# --- summary ---------------------------------------------------------------------------------------


def _shards_stats(out: str, problems: list[str]) -> tuple[str | None, dict[str, Any] | None]:
    from zhclip.pipeline.inspect.stats import folder_stats

    try:
        folder = src.open_folder(out)
    except src.InspectError:
        return None, None
    return folder.uri, folder_stats(folder, problems, progress=True).to_json()


def summary_markdown(out: str, steps: list[FunnelStep], reasons: list[StageReasons],
                     shards_uri: str | None, stats: dict[str, Any] | None, notes: list[str],
                     rejects_page: str | None = None) -> str:
    """``rejects_page``: the reject browser's index, relative to the summary, when it exists."""
    sources = sorted({n for s in steps for n in s.by_source})
    md = markdown_text  # source names, reasons and notes come from the data: never raw HTML
    lines = [f"# zhclip report: {md(out)}", "", "## Funnel", "", f"![funnel]({FUNNEL_PNG})", ""]
    if steps:
        lines.append("| stage | step | rows | % of first | " + " | ".join(md(n) for n in sources) + " |")
        lines.append("|---|---|---:|---:|" + "---:|" * len(sources))
        for s in steps:
            share = f"{100 * s.count / steps[0].count:.1f}" if steps[0].count else "-"
            lines.append(f"| {s.stage} | {s.label} | {s.count} | {share} | "
                         + " | ".join(str(s.by_source.get(n, "")) for n in sources) + " |")
    else:
        lines.append("No stage reports found under report/.")
    for r in reasons:
        lines += ["", f"### {r.stage}: {r.rejected} rejected", ""]
        # A code span shows HTML as text; only a backtick could end it early.
        lines += [f"- `{terminal_safe(reason).replace('`', chr(39))}`: {n}"
                  for reason, n in r.reasons.items()] or ["- (none)"]
    if reasons:
        lines += ["", f"[What each rule dropped: captions, URLs, thumbnails]({rejects_page})" if rejects_page
                  else "Browse what each rule dropped: `zhclip shards browse OUT --rejects`, then rerun the report."]
    lines += ["", "## Shards", ""]
    if stats:
        cap, sc = stats["caption_length"], stats["score"]
        lines += [f"{stats['samples']} samples in {stats['shards']} shards ({md(shards_uri)}).", "",
                  f"![histograms]({HIST_PNG})", "",
                  "| source | samples |", "|---|---:|"]
        lines += [f"| {md(k)} | {n} |" for k, n in stats["by_source"].items()]
        lines += ["", f"- caption length: min {cap['min']}, max {cap['max']}, mean {cap['mean']}",
                  f"- score: mean {sc['mean']} ({sc['missing']} without score)",
                  f"- duplicate keys: {len(stats['duplicate_keys'])}"]
    else:
        lines.append("No dataset/ or downloads/ shards found.")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {md(n)}" for n in notes]
    return "\n".join(lines) + "\n"


_CELL_SPLIT = re.compile(r"(?<!\\)\|")


def _h(text: str) -> str:
    """HTML of Markdown text that :func:`markdown_text` already escaped (never escaped twice)."""
    return html.escape(html.unescape(text))


def summary_html(markdown: str) -> str:
    """A small Markdown subset (headings, tables, lists, images) as a standalone HTML page."""
    body: list[str] = []
    table: list[list[str]] = []

    def flush_table() -> None:
        if not table:
            return
        head, rows = table[0], [r for r in table[2:]]
        body.append("<table><tr>" + "".join(f"<th>{_h(c)}</th>" for c in head) + "</tr>")
        body.extend("<tr>" + "".join(f"<td>{_h(c)}</td>" for c in r) + "</tr>" for r in rows)
        body.append("</table>")
        table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append([c.strip().replace("\\|", "|") for c in _CELL_SPLIT.split(line.strip().strip("|"))])
            continue
        flush_table()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{_h(line[level:].strip())}</h{level}>")
        elif line.startswith("![") and "](" in line:
            alt, _, rest = line[2:].partition("](")
            body.append(f'<img src="{_h(rest.rstrip(")"))}" alt="{_h(alt)}">')
        elif line.startswith("[") and line.endswith(")") and "](" in line:
            text, _, href = line[1:-1].partition("](")
            body.append(f'<p><a href="{_h(href)}">{_h(text)}</a></p>')
        elif line.startswith("- "):
            body.append(f"<li>{_h(line[2:]).replace('`', '')}</li>")
        elif line.strip():
            body.append(f"<p>{_h(line)}</p>")
    flush_table()
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}img{max-width:100%}")
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>zhclip report</title>'
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(out: str, dest: str | None, problems: list[str]) -> list[str]:
    """Write the PNGs and summaries; returns their paths. Raises InspectError if OUT has nothing."""
    out = out.rstrip("/")
    if not paths.exists(out):
        raise src.InspectError(f"{out}: no such folder")
    dest = (dest or paths.join(out, REPORT_DIR)).rstrip("/")
    notes: list[str] = []
    reports = load_reports(out, notes)
    shards_uri, stats = _shards_stats(out, notes)
    if not reports and stats is None:
        raise src.InspectError(f"{out}: neither {REPORT_DIR}/*.json nor shards found "
                               "(is this a zhclip output root?)")
    for stage in STAGE_FILES:
        if stage not in reports:
            notes.append(f"{REPORT_DIR}/{stage}.json not found: the {stage} stage is not in the funnel")
    steps = funnel_steps(reports, notes)
    reasons = stage_reasons(reports)
    written = [paths.join(dest, n) for n in (FUNNEL_PNG, HIST_PNG, SUMMARY_MD, SUMMARY_HTML)]
    _save(funnel_figure(steps), written[0])
    _save(histogram_figure(stats, reports.get("score")), written[1])
    rejects_page = REJECTS_PAGE if paths.exists(paths.join(dest, REJECTS_PAGE)) else None
    md = summary_markdown(out, steps, reasons, shards_uri, stats, notes, rejects_page)
    paths.write_bytes_atomic(written[2], md.encode("utf-8"))
    paths.write_bytes_atomic(written[3], summary_html(md).encode("utf-8"))
    problems.extend(n for n in notes if "unreadable" in n or "damaged" in n or "missing" in n)
    return written
