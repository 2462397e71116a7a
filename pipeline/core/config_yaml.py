"""Reading a config page safely, and applying ``--set dotted.key=value`` overrides.

Kept apart from the config models (config.py) because it knows nothing of which keys
exist: it bounds what a YAML text may expand to and edits plain dicts, so overrides are
validated exactly like the file once the models see them.
"""

from __future__ import annotations

from typing import Any

import yaml
from zhclip.pipeline.core.errors import ConfigError

# A config is a page of settings. YAML aliases let a 1 KB file expand to
# billions of nodes once anything walks it ("billion laughs"), and the
# free-form train: section is walked whole; so the expanded size is bounded
# before any value is built.
MAX_CONFIG_BYTES = 4 << 20
MAX_CONFIG_NODES = 200_000


def _expanded_nodes(node: yaml.Node, memo: dict[int, int], depth: int = 0) -> int:
    """How many nodes ``node`` stands for with every alias expanded (shared nodes counted each time)."""
    if id(node) in memo:
        return memo[id(node)]
    if depth > 200:
        raise ConfigError("config nests deeper than 200 levels")
    memo[id(node)] = 1  # a self-referencing alias counts once, not forever
    total = 1
    if isinstance(node, yaml.SequenceNode):
        total += sum(_expanded_nodes(child, memo, depth + 1) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        total += sum(_expanded_nodes(k, memo, depth + 1) + _expanded_nodes(v, memo, depth + 1)
                     for k, v in node.value)
    memo[id(node)] = total
    return total


def safe_yaml(text: str, origin: str) -> Any:
    """``yaml.safe_load`` with the size of the result bounded (file bytes and expanded nodes)."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{origin}: {len(text)} bytes is more than a config may hold ({MAX_CONFIG_BYTES})")
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if node is not None:
        n = _expanded_nodes(node, {})
        if n > MAX_CONFIG_NODES:
            raise ConfigError(f"{origin}: expands to {n} values through YAML aliases (limit "
                              f"{MAX_CONFIG_NODES}); write the values out instead of nesting aliases")
    return yaml.safe_load(text)


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``dotted.key=value`` override in place; list items by index."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected dotted.key=value")
    dotted, raw = assignment.split("=", 1)
    parts = dotted.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {assignment!r}: empty key segment")
    try:
        value = safe_yaml(raw, f"--set {dotted}") if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {dotted}: not a YAML value: {err}") from None
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {dotted}: '{part}' is not an index of a list")
            node = node[int(part)]
        else:
            if part not in node or node[part] is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict | list):
                raise ConfigError(
                    f"--set {dotted}: '{'.'.join(parts[: i + 1])}' is not a mapping"
                )
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"--set {dotted}: '{last}' is not an index of a list")
        node[int(last)] = value
    else:
        node[last] = value
