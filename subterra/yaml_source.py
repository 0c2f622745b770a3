"""Safe YAML loading that keeps line numbers and never lets a document do harm.

* size and nesting depth are checked first, on the raw text and on the event stream (PyYAML's C
  loader crashes the process on deep nesting and the pure-Python one raises RecursionError, so
  nothing deep ever reaches a composer);
* no tag may construct anything: any explicit tag (``!!python/object``...) is a fault;
* duplicate keys (which PyYAML silently resolves to the last one) are faults;
* every value's line is recorded under its key path, so faults can name the line.

Problems are returned as ``(line, message)`` pairs; nothing here raises on bad input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

MAX_BYTES = 1024 * 1024  # 1 MiB
MAX_DEPTH = 20

KeyPath = tuple


@dataclass
class Loaded:
    """Plain data (dicts, lists, scalars), the line of every key path, and the problems found."""

    data: Any = None
    lines: dict[KeyPath, int] = field(default_factory=dict)
    problems: list[tuple[int, str]] = field(default_factory=list)

    def line(self, *path) -> int:
        """Line of the value at ``path`` (or of its nearest recorded ancestor)."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)


_SAFE = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str) -> Loaded:
    """Parse ``text`` safely into plain data with the line of every value; problems, never raises."""
    out = Loaded()
    size = len(text.encode("utf-8", errors="replace"))
    if size > MAX_BYTES:
        out.problems.append((1, f"file is {size:,} bytes; the limit is {MAX_BYTES:,} bytes"))
        return out
    # 1. events: depth and tags, without building anything
    depth = 0
    try:
        for event in yaml.parse(text, Loader=_SAFE):
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    out.problems.append((event.start_mark.line + 1, f"nesting is deeper than {MAX_DEPTH} levels"))
                    return out
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
            tag = getattr(event, "tag", None)
            implicit = getattr(event, "implicit", None)
            explicit_tag = tag is not None and not (
                implicit is True or (isinstance(implicit, tuple) and implicit[0])
            )
            if explicit_tag and tag not in ("tag:yaml.org,2002:str",):
                out.problems.append((event.start_mark.line + 1, f"YAML tag {tag!r} is not allowed"))
            if isinstance(event, yaml.AliasEvent):
                out.problems.append((event.start_mark.line + 1, "YAML aliases (*name) are not allowed"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark else 1
        problem = getattr(exc, "problem", None) or str(exc)
        if "nesting depth" in problem:  # libyaml's own limit (1,000) can trip before ours is reached
            out.problems.append((line, f"nesting is deeper than {MAX_DEPTH} levels"))
        else:
            out.problems.append((line, f"YAML syntax error: {problem}"))
        return out
    except (RecursionError, MemoryError, ValueError) as exc:  # never let a document take us down
        out.problems.append((1, f"cannot parse the document: {type(exc).__name__}"))
        return out
    if out.problems:
        return out
    # 2. compose (safe: depth is bounded, no tags) and convert with line numbers
    try:
        root = yaml.compose(text, Loader=_SAFE)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        out.problems.append((mark.line + 1 if mark else 1, f"YAML error: {getattr(exc, 'problem', None) or exc}"))
        return out
    if root is None:
        out.problems.append((1, "the file is empty"))
        return out
    constructor = yaml.SafeLoader("")
    out.data = _convert(root, (), out, constructor)
    return out


def _convert(node, path: KeyPath, out: Loaded, constructor) -> Any:
    out.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        result: dict = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                out.problems.append((key_node.start_mark.line + 1, "a mapping key must be a plain value"))
                continue
            try:
                key = constructor.construct_object(key_node)
            except (yaml.YAMLError, ValueError, OverflowError):
                key = None
            if not isinstance(key, (str, int, float, bool)) or key is None:
                out.problems.append((key_node.start_mark.line + 1, f"key {key!r} is not a plain value"))
                continue
            key = str(key) if not isinstance(key, str) else key
            if key in result:
                first = out.lines.get(path + (key,), "?")
                out.problems.append(
                    (key_node.start_mark.line + 1, f"duplicate key {key!r} (first defined on line {first})")
                )
                continue
            out.lines[path + (key,)] = key_node.start_mark.line + 1
            result[key] = _convert(value_node, path + (key,), out, constructor)
        return result
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            out.lines[path + (i,)] = item.start_mark.line + 1
            items.append(_convert(item, path + (i,), out, constructor))
        return items
    try:
        return constructor.construct_object(node)
    except (yaml.YAMLError, ValueError, OverflowError) as exc:
        out.problems.append((node.start_mark.line + 1, f"bad value: {exc}"))
        return None
