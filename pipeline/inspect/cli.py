"""`zhclip shards ...`: look at a shard folder (final shards or img2dataset downloads).

Subcommands: ls, stats, head, show, verify, report, browse. Each reads its
folder through pipeline.inspect_source, which streams one tar at a time. Exit
codes: 0 clean; 1 the folder was read but something in it is damaged (listed
on stderr, or by verify on stdout); 2 the input cannot be inspected at all
(not a shard folder, empty, unknown key). Never a traceback: unexpected
errors print one line (ZHCLIP_DEBUG=1 shows the traceback).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import traceback
from typing import Any

from zhclip.pipeline.core import paths
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.inspect.escape import json_line, terminal_safe
from zhclip.pipeline.shards import reader as src

EXIT_OK, EXIT_DAMAGED, EXIT_BAD_INPUT = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="shards_command", metavar="SUBCOMMAND")
    sub.required = True
    p = sub.add_parser("ls", help="shards with sample counts, bytes and split")
    p.add_argument("path", help="dataset folder, download folder, or output root (local or gs://)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser("stats", help="samples by source; caption length, score and image size histograms")
    p.add_argument("path")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("head", help="the first N samples as a table")
    p.add_argument("path")
    p.add_argument("-n", type=int, default=10, help="number of samples (default 10)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")

    p = sub.add_parser("show", help="write one sample's image and print its caption and metadata")
    p.add_argument("path")
    p.add_argument("key")
    p.add_argument("--out", help="image file to write (.jpg keeps the stored bytes; .png converts)")

    p = sub.add_parser("verify", help="check tars, members, images, sidecars and checksums")
    p.add_argument("path")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-decode", action="store_true", help="skip decoding images (faster)")

    p = sub.add_parser("report", help="funnel chart, histograms and a Markdown/HTML summary of OUT")
    p.add_argument("path", metavar="OUT", help="output root holding report/*.json")
    p.add_argument("--out", help="folder for the PNGs and summaries (default OUT/report)")

    p = sub.add_parser("browse", help="static HTML contact sheet of the samples (or, with --rejects, "
                                      "of what each rule dropped)")
    p.add_argument("path", help="shard folder; with --rejects the output root OUT")
    p.add_argument("--out", help="folder to write index.html and thumbnails into "
                                 "(required, except with --rejects: default OUT/report/rejects)")
    p.add_argument("--rejects", action="store_true",
                   help="one page per reject reason of OUT/rejects: counts, a fixed sample, thumbnails")
    p.add_argument("--per-reason", type=int, default=50, help="with --rejects: rows shown per reason")
    p.add_argument("--per-page", type=int, default=100)
    p.add_argument("--limit", type=int, default=1000, help="samples to include (default 1000; 0 = all)")
    p.add_argument("--thumb", type=int, default=160, help="thumbnail edge in pixels")


def main(args: argparse.Namespace, beam_args: list[str]) -> int:
    name = getattr(args, "shards_command", "?")
    if beam_args:
        return _fail(name, f"unknown arguments: {' '.join(beam_args)}", EXIT_BAD_INPUT)
    try:
        return COMMANDS[name](args)
    except src.InspectError as err:
        return _fail(name, str(err), EXIT_BAD_INPUT)
    except BrokenPipeError:  # `zhclip shards head ... | head -3`
        return EXIT_OK
    except Exception as err:  # the promise is "never a traceback"; ZHCLIP_DEBUG shows it
        if os.environ.get("ZHCLIP_DEBUG"):
            traceback.print_exc()
        return _fail(name, f"unexpected {type(err).__name__}: {err} (ZHCLIP_DEBUG=1 shows the traceback)",
                     EXIT_DAMAGED)


def _fail(name: str, message: str, code: int) -> int:
    print(f"zhclip shards {name}: error: {terminal_safe(message)}", file=sys.stderr)
    return code


def _open(args: argparse.Namespace) -> src.ShardFolder:
    folder = src.open_folder(args.path)
    if folder.note:
        print(f"note: {folder.note}", file=sys.stderr)
    return folder


def _finish(name: str, problems: list[str]) -> int:
    """Print problems met while reading; exit 1 if there were any."""
    if not problems:
        return EXIT_OK
    print(f"zhclip shards {name}: {len(problems)} problem(s) while reading "
          "(`zhclip shards verify` lists all):", file=sys.stderr)
    for line in src.cap_problems(problems):
        print(f"  {terminal_safe(line)}", file=sys.stderr)
    return EXIT_DAMAGED


def _print_json(obj: Any) -> None:
    print(json_line(obj, indent=2))


# --- ls ---------------------------------------------------------------------------------------


def shard_listing(folder: src.ShardFolder) -> list[dict[str, Any]]:
    """One row per shard: samples (manifest, else sidecar), file sizes, and what is missing."""
    rows = []
    for shard in folder.shards:
        entry = src.manifest_entry(folder, shard.name)
        notes = []
        samples = entry.get("samples") if entry else None
        if samples is None:
            samples = src.sidecar_rows(shard, folder.kind)
            if samples is None:
                notes.append("sidecar missing" if shard.parquet is None else "sidecar unreadable")
        if shard.tar is None:
            notes.append("tar missing")
        if shard.parquet is None and "sidecar missing" not in notes:
            notes.append("sidecar missing")
        if folder.manifest is not None and entry is None:
            notes.append("not in manifest")
        rows.append({"shard": shard.name, "split": shard.split, "samples": samples,
                     "tar_bytes": src.file_size(shard.tar), "parquet_bytes": src.file_size(shard.parquet),
                     "problems": notes})
    return rows


def cmd_ls(args: argparse.Namespace) -> int:
    folder = _open(args)
    rows = shard_listing(folder)
    total = sum(r["samples"] or 0 for r in rows)
    if args.json:
        _print_json({"folder": folder.uri, "kind": folder.kind, "shards": rows, "total_samples": total,
                     "total_bytes": sum((r["tar_bytes"] or 0) + (r["parquet_bytes"] or 0) for r in rows)})
    else:
        print(f"{'shard':<24} {'split':<6} {'samples':>9} {'tar bytes':>13} {'parquet bytes':>13}  problems")
        for r in rows:
            print(f"{r['shard']:<24} {r['split'] or '-':<6} {_n(r['samples']):>9} {_n(r['tar_bytes']):>13} "
                  f"{_n(r['parquet_bytes']):>13}  {', '.join(r['problems'])}")
        print(f"{len(rows)} shards, {total} samples ({folder.kind}: {folder.uri})")
    return _finish("ls", [f"{r['shard']}: {', '.join(r['problems'])}" for r in rows if r["problems"]])


def _n(value: int | None) -> str:
    return "?" if value is None else str(value)


# --- stats ------------------------------------------------------------------------------------


def cmd_stats(args: argparse.Namespace) -> int:
    from zhclip.pipeline.inspect.stats import folder_stats, format_stats

    folder = _open(args)
    problems: list[str] = []
    stats = folder_stats(folder, problems, progress=True).to_json()
    if args.json:
        _print_json({"folder": folder.uri, "kind": folder.kind, **stats, "problems": problems})
    else:
        print(format_stats(stats, folder))
    return _finish("stats", problems)


# --- head ------------------------------------------------------------------------------------


def sample_summary(sample: src.Sample) -> dict[str, Any]:
    return {S.KEY: sample.key, S.SOURCE: sample.source, S.SCORE: sample.score, S.CAPTION: sample.caption,
            S.WIDTH: sample.width, S.HEIGHT: sample.height, "shard": sample.shard}


def cmd_head(args: argparse.Namespace) -> int:
    if args.n < 0:
        return _fail("head", "-n must be >= 0", EXIT_BAD_INPUT)
    folder = _open(args)
    problems: list[str] = []
    rows = []
    for sample in src.iter_samples(folder, problems):
        if len(rows) >= args.n:
            break
        rows.append(sample_summary(sample))
    if args.json:
        for r in rows:
            print(json_line(r))
    else:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table(title=f"{folder.uri}: first {len(rows)} samples")
        for col in ("key", "source", "score", "caption"):
            table.add_column(col, justify="right" if col == "score" else "left", overflow="fold")
        for r in rows:
            score = "" if r[S.SCORE] is None else f"{r[S.SCORE]:.4f}"
            cells = [r[S.KEY], r[S.SOURCE], score, r[S.CAPTION] or "(no caption)"]
            # Text(), not str: rich would read "[bold]" in a caption as its own markup.
            table.add_row(*(Text(terminal_safe(c)) for c in cells))
        Console(width=int(os.environ.get("COLUMNS", 120)), soft_wrap=False).print(table)
    return _finish("head", problems)


# --- show ------------------------------------------------------------------------------------


def find_sample(folder: src.ShardFolder, key: str, problems: list[str]) -> src.Sample | None:
    """Locate the shard from the sidecars' key columns, then read only that tar."""
    for shard in folder.shards:
        try:
            if key not in set(src.read_sidecar(shard, folder.kind).column(S.KEY).to_pylist()):
                continue
        except src.InspectError as err:
            problems.append(f"{err}; searching its tar")
        for sample in src.iter_samples(folder, problems, [shard]):
            if sample.key == key:
                return sample
    return None


def write_image(image: bytes, out: str) -> None:
    """Stored bytes for .jpg/.jpeg (lossless copy); other suffixes are converted with PIL."""
    suffix = out.rpartition(".")[2].lower()
    data = image
    if suffix not in ("jpg", "jpeg"):
        from PIL import Image

        buf = io.BytesIO()
        with Image.open(io.BytesIO(image)) as img:
            img.save(buf, format={"png": "PNG", "webp": "WEBP"}.get(suffix, "PNG"))
        data = buf.getvalue()
    paths.write_bytes_atomic(out, data)


def cmd_show(args: argparse.Namespace) -> int:
    folder = _open(args)
    problems: list[str] = []
    sample = find_sample(folder, args.key, problems)
    if sample is None:
        _finish("show", problems)
        return _fail("show", f"key {args.key!r} not found in {folder.uri}", EXIT_BAD_INPUT)
    print(f"key:     {terminal_safe(sample.key)}")
    print(f"shard:   {terminal_safe(sample.shard)}")
    print(f"caption: {terminal_safe(sample.caption) if sample.caption is not None else '(no caption)'}")
    print("metadata:")
    print(json_line(sample.meta, indent=2, sort_keys=True, default=str))
    if args.out:
        if sample.image is None:
            problems.append(f"{sample.shard}/{sample.key}: no image member to write")
        else:
            try:
                write_image(sample.image, args.out)
                print(f"image:   {args.out} ({len(sample.image)} bytes stored)")
            except OSError as err:
                problems.append(f"{sample.shard}/{sample.key}: image not written ({err})")
    return _finish("show", problems)


# --- verify ------------------------------------------------------------------------------------


def cmd_verify(args: argparse.Namespace) -> int:
    from zhclip.pipeline.shards.verify import format_result, verify_folder

    folder = _open(args)
    result = verify_folder(folder, decode=not args.no_decode, progress=True)
    if args.json:
        _print_json(result.to_json())
    else:
        print(format_result(result))
    return EXIT_OK if result.ok else EXIT_DAMAGED


# --- report, browse ----------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    from zhclip.pipeline.inspect.report import write_report

    problems: list[str] = []
    written = write_report(args.path, args.out, problems)
    for path in written:
        print(path)
    return _finish("report", problems)


def cmd_browse(args: argparse.Namespace) -> int:
    from zhclip.pipeline.inspect.browse import write_browser

    if args.per_page < 1 or args.limit < 0 or args.thumb < 16 or args.per_reason < 1:
        return _fail("browse", "need --per-page >= 1, --limit >= 0, --thumb >= 16, --per-reason >= 1",
                     EXIT_BAD_INPUT)
    if args.rejects:
        from zhclip.pipeline.inspect.browse_rejects import write_reject_browser

        problems: list[str] = []
        pages = write_reject_browser(args.path, args.out, problems, per_reason=args.per_reason,
                                     thumb=args.thumb)
        print(f"{pages[0]} ({len(pages) - 1} reason page(s))")
        return _finish("browse", problems)
    if not args.out:
        return _fail("browse", "--out is required (except with --rejects)", EXIT_BAD_INPUT)
    folder = _open(args)
    problems: list[str] = []
    pages = write_browser(folder, args.out, problems, per_page=args.per_page,
                          limit=args.limit or None, thumb=args.thumb)
    print(f"{pages[0]} ({len(pages)} page(s))" if pages else "no samples")
    return _finish("browse", problems)


COMMANDS = {"ls": cmd_ls, "stats": cmd_stats, "head": cmd_head, "show": cmd_show,
            "verify": cmd_verify, "report": cmd_report, "browse": cmd_browse}
