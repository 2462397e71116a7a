"""Hostile captions and source names reach the terminal and summary.md escaped, never raw."""

from __future__ import annotations

import json
import re

from zhclip.pipeline.cli import main as zhclip
from zhclip.pipeline.demo.synthetic import Row, write_download_shard
from zhclip.pipeline.inspect.escape import json_line, markdown_text, terminal_safe
from zhclip.pipeline.inspect.report import FunnelStep, StageReasons, summary_html, summary_markdown

# OSC retitle, clear screen, an 8-bit CSI, a bidi override, and rich markup.
HOSTILE = "红色\x1b]0;pwned\x07的\x1b[2J花\x9b31m朵\u202egpj.exe[bold]x[/bold]"
RAW = ("\x1b", "\x07", "\x9b", "\u202e")


def test_escapes_show_every_control_and_keep_json_valid():
    safe = terminal_safe(HOSTILE)
    assert not any(c in safe for c in RAW)
    assert "\\x1b]0;pwned\\x07" in safe and "\\u202e" in safe and "红色" in safe
    line = json_line({"caption": HOSTILE})
    assert not any(c in line for c in RAW) and json.loads(line) == {"caption": HOSTILE}
    assert markdown_text("<b>a|b</b>") == "&lt;b&gt;a\\|b&lt;/b&gt;"


def test_head_and_show_print_no_raw_control_characters(tmp_path, capsys):
    write_download_shard(tmp_path, "00000", [Row("wukong_evil", caption=HOSTILE)])
    for argv in (["head", str(tmp_path)], ["head", str(tmp_path), "--json"],
                 ["show", str(tmp_path), "wukong_evil"]):
        assert zhclip(["shards", *argv]) == 0
        out, err = capsys.readouterr()
        assert not any(c in out + err for c in RAW), argv
        assert "pwned" in out and "红色" in out
    assert zhclip(["shards", "head", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["caption"] == HOSTILE  # escaped, not altered


def test_summary_markdown_escapes_html_from_source_names_and_notes():
    evil = '<img src=x onerror="alert(1)">'
    steps = [FunnelStep("metadata", "rows in", 3, {evil: 2, "a|b": 1})]
    md = summary_markdown("runs/<x>", steps, [StageReasons("metadata", 1, {"blacklist:ad:`<b>": 1})],
                          None, None, [f"note {evil}"])
    assert "<img" not in md and "&lt;img src=x" in md
    assert "- `blacklist:ad:'<b>`: 1" in md  # a code span shows HTML as text; no backtick ends it
    header, rule = (line for line in md.splitlines() if line.startswith("| stage") or line.startswith("|---"))
    assert len(re.split(r"(?<!\\)\|", header)) == len(rule.split("|"))  # a|b did not open a column
    page = summary_html(md)
    assert "<img src=x" not in page and "&lt;img src=x onerror=" in page
    assert "&amp;lt;" not in page  # escaped once, not twice
    assert "<th>a|b</th>" in page
