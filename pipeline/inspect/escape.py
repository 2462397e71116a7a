"""Text from shards made safe for where it is shown: a terminal, or a Markdown report.

Captions, keys and source names are input from the web. Sent raw to a
terminal, ``\\x1b]...`` or a C1 ``\\x9b`` can retitle the window, hide lines or
move the cursor; in summary.md, ``<script>`` or a ``|`` breaks the page or the
table. Each is shown as an escape instead, so what is printed is what is there.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

# C0 and C1 controls, DEL, and the bidi overrides/isolates that reorder a line.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")  # json.dumps escapes C0 itself


def _escape_char(m: re.Match[str]) -> str:
    c = m.group(0)
    return {"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(c) or (
        f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def terminal_safe(text: Any) -> str:
    """``text`` with every control or reordering character shown as a visible escape."""
    return _UNSAFE.sub(_escape_char, str(text))


def json_line(obj: Any, **kwargs: Any) -> str:
    """JSON that stays valid and parses to the same value, with nothing a terminal would act on."""
    text = json.dumps(obj, ensure_ascii=False, **kwargs)
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group(0)):04x}", text)


def markdown_text(text: Any) -> str:
    """Plain text for a Markdown table cell or list item: HTML escaped, no pipes or newlines."""
    return html.escape(terminal_safe(text)).replace("|", "\\|")
