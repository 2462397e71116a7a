"""Funnel counts: merging them in Beam, writing report JSON, printing tables.

Counts travel as nested dicts ``{source: {"rows_in": n, "kept": n,
"reasons": {reason: n}}}`` so that any step can add to them and a
CombineGlobally can merge them, whatever the order.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

Counts = dict[str, dict[str, Any]]


def counts(source: str, rows_in: int = 0, kept: int = 0, reasons: dict[str, int] | None = None,
           unknown: int = 0) -> Counts:
    """One step's counts for ``source``.

    ``unknown`` counts files whose remaining rows could not be counted (a CSV
    that stops parsing partway): their rows in are a lower bound, so the report
    says "unknown" instead of claiming a balance it cannot check.
    """
    c: dict[str, Any] = {"rows_in": rows_in, "kept": kept, "reasons": dict(reasons or {})}
    if unknown:
        c["unknown"] = unknown
    return {source: c}


def balance(rows_in: int, kept: int, rejected: int, unknown: int = 0) -> bool | str:
    """True/False when the rows can be checked, "unknown" when some file's rows could not be counted."""
    if unknown:
        return "unknown"
    return rows_in == kept + rejected


def merge_counts(items: Iterable[Counts]) -> Counts:
    out: Counts = {}
    for item in items:
        for source, c in item.items():
            dst = out.setdefault(source, {"rows_in": 0, "kept": 0, "reasons": {}})
            dst["rows_in"] += c.get("rows_in", 0)
            dst["kept"] += c.get("kept", 0)
            if c.get("unknown"):
                dst["unknown"] = dst.get("unknown", 0) + c["unknown"]
            for reason, n in c.get("reasons", {}).items():
                dst["reasons"][reason] = dst["reasons"].get(reason, 0) + n
    return out


def finalize(stage: str, merged: Counts, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Add rejected totals and the accounting check per source and overall."""
    sources = {}
    total = {"rows_in": 0, "kept": 0, "rejected": 0, "reasons": {}}
    unknown_total = 0
    for source in sorted(merged):
        c = merged[source]
        rejected = sum(c["reasons"].values())
        sources[source] = {
            "rows_in": c["rows_in"],
            "kept": c["kept"],
            "rejected": rejected,
            "balanced": balance(c["rows_in"], c["kept"], rejected, c.get("unknown", 0)),
            "reasons": dict(sorted(c["reasons"].items(), key=lambda kv: (-kv[1], kv[0]))),
        }
        if c.get("unknown"):
            sources[source]["unknown_files"] = c["unknown"]
            unknown_total += c["unknown"]
        total["rows_in"] += c["rows_in"]
        total["kept"] += c["kept"]
        total["rejected"] += rejected
        for r, n in c["reasons"].items():
            total["reasons"][r] = total["reasons"].get(r, 0) + n
    total["balanced"] = balance(total["rows_in"], total["kept"], total["rejected"], unknown_total)
    total["reasons"] = dict(sorted(total["reasons"].items(), key=lambda kv: (-kv[1], kv[0])))
    report = {"stage": stage, "sources": sources, "total": total}
    report.update(extra or {})
    return report


def to_json(report: dict[str, Any]) -> bytes:
    return json.dumps(report, ensure_ascii=False, indent=2, sort_keys=False).encode("utf-8")


def print_funnel(report: dict[str, Any], title: str | None = None) -> None:
    """Print per-source in/kept/rejected and the top reasons as a table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title or f"zhclip {report.get('stage', '')} funnel")
    table.add_column("source")
    table.add_column("rows in", justify="right")
    table.add_column("kept", justify="right")
    table.add_column("rejected", justify="right")
    table.add_column("balanced")
    table.add_column("reasons")
    rows = list(report["sources"].items()) + [("TOTAL", report["total"])]
    for source, c in rows:
        reasons = ", ".join(f"{r}={n}" for r, n in list(c["reasons"].items())[:8])
        more = len(c["reasons"]) - 8
        if more > 0:
            reasons += f", +{more} more"
        table.add_row(source, str(c["rows_in"]), str(c["kept"]), str(c["rejected"]),
                      _balance_word(c["balanced"]), reasons)
    Console(width=160).print(table)


def _balance_word(balanced: bool | str) -> str:
    if balanced == "unknown":
        return "unknown"
    return "yes" if balanced else "NO"
