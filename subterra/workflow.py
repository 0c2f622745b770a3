"""The workflow definition, format v1: loading, validating, and the model the stages share.

``validate_file`` reports every fault of a file at once, each with its file, line and a plain
sentence; ``load_workflow`` returns a ``Workflow`` or raises ``WorkflowError`` with all of them.
See ``docs/workflow-format.md`` for the format.
"""

from __future__ import annotations

import datetime as dt
import difflib
import hashlib
import json
import re
import string
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from subterra.yaml_source import MAX_BYTES, Loaded, load_yaml

ID = re.compile(r"[a-z][a-z0-9_]{0,63}")
SLOT_TYPES = ("string", "integer", "number", "date", "boolean", "enum")
END_KINDS = ("success", "abandoned", "escalated")
TOP_KEYS = {"workflow", "title", "assistant", "start", "max_visits", "slots", "nodes"}
NODE_KEYS = {"prompt", "say", "collect", "user", "next", "branches", "end"}
BRANCH_KEYS = {"to", "when", "user", "collect"}
SLOT_KEYS = {"type", "description", "values", "min", "max"}
MAX_VISITS_LIMIT = 10


@dataclass(frozen=True)
class Fault:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class WorkflowError(ValueError):
    """A workflow file with faults; ``faults`` lists every one of them."""

    def __init__(self, faults: list[Fault]):
        self.faults = list(faults)
        super().__init__("\n".join(str(f) for f in self.faults))


@dataclass(frozen=True)
class Slot:
    name: str
    type: str = "string"
    description: str = ""
    values: tuple[str, ...] = ()
    min: Any = None
    max: Any = None
    line: int = 0


@dataclass(frozen=True)
class Branch:
    to: str
    when: str = ""
    user: tuple[str, ...] = ()
    collect: tuple[str, ...] = ()


@dataclass(frozen=True)
class Edge:
    id: str
    source: str
    target: str
    kind: str  # "next" | "branch"
    index: int = 0
    when: str = ""
    user: tuple[str, ...] = ()
    collect: tuple[str, ...] = ()


@dataclass(frozen=True)
class Node:
    id: str
    prompt: str
    say: tuple[str, ...] = ()
    collect: tuple[str, ...] = ()
    user: tuple[str, ...] = ()
    next: str | None = None
    branches: tuple[Branch, ...] = ()
    end: str | None = None
    line: int = 0

    @property
    def is_terminal(self) -> bool:
        return self.end is not None

    @property
    def is_decision(self) -> bool:
        return len(self.branches) >= 2


@dataclass(frozen=True)
class Workflow:
    id: str
    assistant: str
    start: str
    nodes: dict[str, Node]
    slots: dict[str, Slot] = field(default_factory=dict)
    title: str = ""
    max_visits: int = 1
    source: str = ""

    @property
    def edges(self) -> tuple[Edge, ...]:
        cached = self.__dict__.get("_edges")
        if cached is None:
            out = []
            for node in self.nodes.values():
                if node.next is not None:
                    out.append(Edge(f"{node.id}>{node.next}", node.id, node.next, "next", 0, "", node.user, node.collect))
                for i, b in enumerate(node.branches):
                    out.append(Edge(f"{node.id}>{b.to}#{i}", node.id, b.to, "branch", i, b.when, b.user, b.collect))
            cached = tuple(out)
            object.__setattr__(self, "_edges", cached)
        return cached

    def out_edges(self, node_id: str) -> tuple[Edge, ...]:
        index = self.__dict__.get("_out")
        if index is None:
            index = {}
            for e in self.edges:
                index.setdefault(e.source, []).append(e)
            index = {k: tuple(v) for k, v in index.items()}
            object.__setattr__(self, "_out", index)
        return index.get(node_id, ())

    def edge_slots(self, edge: Edge) -> tuple[str, ...]:
        """The slots a move along ``edge`` collects: its source step's own, then the edge's."""
        return tuple(dict.fromkeys(self.nodes[edge.source].collect + edge.collect))

    def collected_between(self, at: str | None, to: str, surely: bool = True) -> tuple[str, ...]:
        """The slots a move from step ``at`` to step ``to`` surely collects: those every shortest
        way between them collects (along a way, every edge's: a move past several steps, as when a
        first message carries the whole request, collects every step's; across ways, only what
        all of them do: paying by card or with miles both lead to the booking, only one collects
        the miles number). ``at`` None is before the conversation (the start). A step kept
        (``to`` == ``at``) collects only what every loop on it does. With ``surely`` False, what
        the move may collect: what any of the shortest ways does (the miles number too)."""
        key = (at, to, surely)
        memo = self.__dict__.setdefault("_between", {})
        if key in memo:
            return memo[key]
        source = self.start if at is None else at
        if at is None and to == self.start:
            memo[key] = ()
            return ()
        step = self.edge_slots

        def common(ways: list[tuple[str, ...]]) -> tuple[str, ...]:
            if not surely:
                return tuple(dict.fromkeys(s for w in ways for s in w))
            return tuple(s for s in ways[0] if all(s in w for w in ways[1:])) if ways else ()

        if to == source:
            found = common([step(e) for e in self.out_edges(source) if e.target == to])
            memo[key] = found
            return found
        carried: dict[str, tuple[str, ...]] = {source: ()}
        frontier = [source]
        while frontier and to not in carried:
            reached: dict[str, list[tuple[str, ...]]] = {}
            for node in frontier:
                for e in self.out_edges(node):
                    if e.target not in carried:
                        reached.setdefault(e.target, []).append(tuple(dict.fromkeys(carried[node] + step(e))))
            carried.update({node: common(ways) for node, ways in reached.items()})
            frontier = list(reached)
        found = carried.get(to, ())
        memo[key] = found
        return found

    def to_dict(self) -> dict:
        """The canonical, JSON-serialisable definition (no line numbers, no source)."""
        return {
            "workflow": self.id,
            "title": self.title,
            "assistant": self.assistant,
            "start": self.start,
            "max_visits": self.max_visits,
            "slots": {
                name: {"type": s.type, "description": s.description, "values": list(s.values), "min": _plain(s.min), "max": _plain(s.max)}
                for name, s in self.slots.items()
            },
            "nodes": {
                n.id: {
                    "prompt": n.prompt,
                    "say": list(n.say),
                    "collect": list(n.collect),
                    "user": list(n.user),
                    "next": n.next,
                    "branches": [{"to": b.to, "when": b.when, "user": list(b.user), "collect": list(b.collect)} for b in n.branches],
                    "end": n.end,
                }
                for n in self.nodes.values()
            },
        }

    @classmethod
    def from_dict(cls, d: dict, source: str = "") -> "Workflow":
        slots = {
            name: Slot(name, s["type"], s.get("description", ""), tuple(s.get("values", ())), s.get("min"), s.get("max"))
            for name, s in d.get("slots", {}).items()
        }
        nodes = {
            nid: Node(
                nid,
                n["prompt"],
                tuple(n.get("say", ())),
                tuple(n.get("collect", ())),
                tuple(n.get("user", ())),
                n.get("next"),
                tuple(Branch(b["to"], b.get("when", ""), tuple(b.get("user", ())), tuple(b.get("collect", ()))) for b in n.get("branches", ())),
                n.get("end"),
            )
            for nid, n in d["nodes"].items()
        }
        return cls(d["workflow"], d["assistant"], d["start"], nodes, slots, d.get("title", ""), int(d.get("max_visits", 1)), source)

    @property
    def content_hash(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def short_hash(self) -> str:
        return self.content_hash[:16]


def _plain(value):
    return value.isoformat() if isinstance(value, (dt.date, dt.datetime)) else value


# --------------------------------------------------------------------------------------------
class _Checker:
    def __init__(self, file: str, loaded: Loaded):
        self.file = file
        self.loaded = loaded
        self.faults: list[Fault] = [Fault(file, line, msg) for line, msg in loaded.problems]

    def fault(self, path: tuple, message: str) -> None:
        self.faults.append(Fault(self.file, self.loaded.line(*path), message))

    def text(self, value, path, what, required=False, one_line=False) -> str:
        if value is None:
            if required:
                self.fault(path, f"{what} is required")
            return ""
        if not isinstance(value, str) or (required and not value.strip()):
            self.fault(path, f"{what} must be a non-empty text, not {_shown(value)}")
            return ""
        if one_line and "\n" in value.strip():
            self.fault(path, f"{what} must be one line")
        return value

    def texts(self, value, path, what) -> tuple[str, ...]:
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            self.fault(path, f"{what} must be a list of texts")
            return ()
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                self.fault(path + (i,), f"{what} item {i + 1} must be a non-empty text")
            else:
                out.append(item)
        return tuple(out)

    def ident(self, value, path, what) -> bool:
        if not isinstance(value, str) or not ID.fullmatch(value):
            self.fault(path, f"{what} {value!r} is not a valid id ([a-z][a-z0-9_]{{0,63}})")
            return False
        return True

    def unknown_keys(self, mapping: dict, allowed: set, path: tuple, what: str) -> None:
        for key in mapping:
            if key not in allowed:
                guess = difflib.get_close_matches(key, sorted(allowed), n=1)
                hint = f"did you mean {guess[0]!r}?" if guess else f"allowed: {', '.join(sorted(allowed))}"
                self.fault(path + (key,), f"unknown key {key!r} in {what} ({hint})")


def _shown(value) -> str:
    """A value's kind in words, for messages."""
    kinds = {list: "a list", dict: "a mapping", bool: "true/false", int: "a number", float: "a number", type(None): "empty"}
    return kinds.get(type(value), f"{value!r}")


def parse_workflow_text(text: str, filename: str) -> Workflow:
    """Parse and validate a workflow from text; raise ``WorkflowError`` with every fault."""
    workflow, faults = _parse(text, filename)
    if faults:
        raise WorkflowError(faults)
    return workflow


def _read(path: Path) -> tuple[str | None, list[Fault]]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return None, [Fault(str(path), 1, f"cannot read the file: {exc.strerror or exc}")]
    return _decode(raw, str(path))


def _decode(raw: bytes, filename: str) -> tuple[str | None, list[Fault]]:
    if len(raw) > MAX_BYTES:
        return None, [Fault(filename, 1, f"file is {len(raw):,} bytes; the limit is {MAX_BYTES:,} bytes")]
    try:
        return raw.decode("utf-8"), []
    except UnicodeDecodeError as exc:
        return None, [Fault(filename, 1, f"file is not UTF-8 text ({exc.reason} at byte {exc.start})")]


def parse_workflow_bytes(raw: bytes, filename: str) -> Workflow:
    """A workflow from the bytes of its file (read once by the caller); ``WorkflowError`` with every fault."""
    text, faults = _decode(raw, filename)
    if text is None:
        raise WorkflowError(faults)
    return parse_workflow_text(text, filename)


def _parse_file(path) -> tuple[Workflow | None, list[Fault]]:
    path = Path(path)
    text, faults = _read(path)
    if text is None:
        return None, faults
    return _parse(text, str(path))


def validate_file(path) -> list[Fault]:
    """Every fault of a workflow file (empty if it is valid); never raises."""
    return _parse_file(path)[1]


def load_workflow(path) -> Workflow:
    """Load a workflow file; raise ``WorkflowError`` with every fault if it has any."""
    workflow, faults = _parse_file(path)
    if faults:
        raise WorkflowError(faults)
    return workflow


def _parse(text: str, filename: str) -> tuple[Workflow | None, list[Fault]]:
    try:
        workflow, faults = _parse_checked(text, filename)
        return workflow, sorted(faults, key=lambda f: f.line)
    except RecursionError:  # depth is bounded before composing; this is a last line of defence
        return None, [Fault(filename, 1, "the document is too deeply nested")]


def _parse_checked(text: str, filename: str) -> tuple[Workflow | None, list[Fault]]:
    loaded = load_yaml(text)
    c = _Checker(filename, loaded)
    if c.faults:
        return None, c.faults
    data = loaded.data
    if not isinstance(data, dict):
        c.fault((), "the file must be a mapping with workflow, assistant, start and nodes")
        return None, c.faults
    c.unknown_keys(data, TOP_KEYS, (), "the workflow")

    wid = data.get("workflow")
    if wid is None:
        c.fault((), "'workflow' (the workflow id) is required")
    elif c.ident(wid, ("workflow",), "workflow id"):
        stem = Path(filename).stem
        if filename and not filename.startswith("<") and stem != wid:
            c.fault(("workflow",), f"workflow id {wid!r} must equal the file name's stem {stem!r}")
    title = c.text(data.get("title"), ("title",), "'title'", one_line=True) if data.get("title") is not None else ""
    assistant = c.text(data.get("assistant"), ("assistant",), "'assistant'", required=True, one_line=True)
    start = data.get("start")
    if start is None:
        c.fault((), "'start' (the first node) is required")
    elif not c.ident(start, ("start",), "start node"):
        start = None
    max_visits = data.get("max_visits", 1)
    if not isinstance(max_visits, int) or isinstance(max_visits, bool) or not 1 <= max_visits <= MAX_VISITS_LIMIT:
        c.fault(("max_visits",), f"'max_visits' must be an integer from 1 to {MAX_VISITS_LIMIT}")
        max_visits = 1

    slots = _parse_slots(c, data.get("slots"))
    nodes_raw = data.get("nodes")
    if not isinstance(nodes_raw, dict) or not nodes_raw:
        c.fault(("nodes",), "'nodes' must be a non-empty mapping of node ids to nodes")
        return None, c.faults
    nodes: dict[str, Node] = {}
    for nid, raw in nodes_raw.items():
        node = _parse_node(c, nid, raw, slots)
        if node is not None:
            nodes[nid] = node
    if start is not None and start not in nodes_raw:
        c.fault(("start",), f"start node {start!r} is not defined")
    # nodes whose way out is broken are assumed to end, so the graph checks below add no echoes
    open_ended = {n.id for n in nodes.values() if n.next is None and not n.branches and n.end is None}
    open_ended |= {n.id for n in nodes.values() if isinstance(nodes_raw[n.id].get("branches"), list)
                   and len(n.branches) != len(nodes_raw[n.id]["branches"])}
    for node in nodes.values():
        exits = [(node.next, ("nodes", node.id, "next"))] + [
            (b.to, ("nodes", node.id, "branches", i, "to")) for i, b in enumerate(node.branches)
        ]
        for name, path in exits:
            if name is not None and name not in nodes:
                open_ended.add(node.id)
                if name not in nodes_raw:
                    c.fault(path, f"node {node.id!r} goes to unknown node {name!r}")
    wf = Workflow(wid if isinstance(wid, str) else "", assistant, start or "", nodes, slots, title, max_visits, filename)
    if start in nodes:
        reach = reachable(wf, start)
        # a broken edge may be the intended way in: report unreachable nodes once every edge resolves
        for nid in nodes if not open_ended & reach else ():
            if nid not in reach:
                c.fault(("nodes", nid), f"node {nid!r} cannot be reached from the start node {start!r}")
        ends = _can_end(wf, open_ended)
        for nid in nodes:
            if nid in reach and nid not in ends:
                c.fault(("nodes", nid), f"node {nid!r} cannot reach any terminal node (a node with 'end')")
    if c.faults:
        return None, c.faults
    return wf, []


def _parse_slots(c: _Checker, raw) -> dict[str, Slot]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        c.fault(("slots",), "'slots' must be a mapping of slot names to slot definitions")
        return {}
    slots = {}
    for name, spec in raw.items():
        path = ("slots", name)
        if not c.ident(name, path, "slot name"):
            continue
        if spec is None:
            spec = {}
        if not isinstance(spec, dict):
            c.fault(path, f"slot {name!r} must be a mapping (type, description, values, min, max)")
            continue
        c.unknown_keys(spec, SLOT_KEYS, path, f"slot {name!r}")
        kind = spec.get("type", "string")
        if kind not in SLOT_TYPES:
            c.fault(path + ("type",), f"slot {name!r} has unknown type {kind!r} (one of {', '.join(SLOT_TYPES)})")
            continue
        if "values" in spec and kind not in ("string", "enum"):
            c.fault(path + ("values",), f"slot {name!r}: 'values' apply to string and enum slots only, not {kind}")
        values = spec.get("values", [])
        if not isinstance(values, list) or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in values):
            c.fault(path + ("values",), f"slot {name!r}: 'values' must be a list of plain values")
            values = []
        values = tuple(str(v) for v in values)
        for i, v in enumerate(values):
            if '"' in v or "\\" in v or not v.strip():
                c.fault(path + ("values", i), f"slot {name!r}: value {v!r} must be non-empty, without quotes or backslashes")
        if kind == "enum" and not values:
            c.fault(path, f"enum slot {name!r} needs 'values'")
        description = spec.get("description")
        description = "" if description is None else c.text(description, path + ("description",), f"slot {name!r}: 'description'")
        lo, hi = spec.get("min"), spec.get("max")
        if kind in ("integer", "number"):
            for key, v in (("min", lo), ("max", hi)):
                if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or (kind == "integer" and not isinstance(v, int))):
                    c.fault(path + (key,), f"slot {name!r}: '{key}' must be a{'n integer' if kind == 'integer' else ' number'}")
                    lo, hi = None, None
        elif kind == "date":
            parsed = []
            for key, v in (("min", lo), ("max", hi)):
                if v is None:
                    parsed.append(None)
                    continue
                try:
                    parsed.append(v if isinstance(v, dt.date) else dt.date.fromisoformat(str(v)))
                except ValueError:
                    c.fault(path + (key,), f"slot {name!r}: '{key}' must be an ISO date (YYYY-MM-DD)")
                    parsed.append(None)
            lo, hi = parsed
            lo, hi = (lo.isoformat() if lo else None), (hi.isoformat() if hi else None)
        elif lo is not None or hi is not None:
            c.fault(path, f"slot {name!r}: 'min'/'max' apply to integer, number and date slots only")
            lo = hi = None
        if lo is not None and hi is not None and lo > hi:
            c.fault(path + ("min",), f"slot {name!r}: min {lo} is greater than max {hi}")
        slots[name] = Slot(name, kind, description, values, lo, hi, c.loaded.line(*path))
    return slots


def _check_templates(c: _Checker, templates, path, slots, what) -> None:
    for i, template in enumerate(templates):
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as exc:
            c.fault(path + (i,), f"{what} {template!r}: bad braces ({exc}); write {{slot}} or use no braces")
            continue
        for _literal, name, spec, conv in parsed:
            if name is None:
                continue
            if conv or spec or not ID.fullmatch(name or ""):
                shown = "{" + (name or "") + (("!" + conv) if conv else "") + ((":" + spec) if spec else "") + "}"
                c.fault(path + (i,), f"{what} {template!r}: placeholder {shown} must be a plain slot name like {{city}}")
            elif name not in slots:
                c.fault(path + (i,), f"{what} {template!r}: placeholder {{{name}}} is not a declared slot")


def _parse_node(c: _Checker, nid, raw, slots: dict[str, Slot]) -> Node | None:
    path = ("nodes", nid)
    if not c.ident(nid, path, "node id"):
        return None
    if not isinstance(raw, dict):
        c.fault(path, f"node {nid!r} must be a mapping with at least 'prompt', not {_shown(raw)}")
        return None
    c.unknown_keys(raw, NODE_KEYS, path, f"node {nid!r}")
    prompt = c.text(raw.get("prompt"), path + ("prompt",), f"node {nid!r}: 'prompt'", required=True)
    say = c.texts(raw.get("say"), path + ("say",), f"node {nid!r}: 'say'")
    user = c.texts(raw.get("user"), path + ("user",), f"node {nid!r}: 'user'")
    collect = _collect(c, raw.get("collect"), path + ("collect",), slots, f"node {nid!r}")
    _check_templates(c, say, path + ("say",), slots, f"node {nid!r} say line")
    _check_templates(c, user, path + ("user",), slots, f"node {nid!r} user line")
    present = [k for k in ("next", "branches", "end") if k in raw]
    if len(present) != 1:
        c.fault(path, f"node {nid!r} must have exactly one of next, branches or end (has {', '.join(present) or 'none'})")
    nxt = raw.get("next")
    if "next" in raw and not (isinstance(nxt, str) and ID.fullmatch(nxt)):
        c.fault(path + ("next",), f"node {nid!r}: 'next' must be a node id, not {_shown(nxt)}")
        nxt = None
    end = raw.get("end")
    if "end" in raw and end not in END_KINDS:
        c.fault(path + ("end",), f"node {nid!r}: 'end' must be one of {', '.join(END_KINDS)} (got {_shown(end)})")
        end = None
    branches = _parse_branches(c, nid, raw["branches"], path + ("branches",), slots) if "branches" in raw else ()
    return Node(nid, prompt, say, collect, user, nxt, branches, end, c.loaded.line(*path))


def _parse_branches(c: _Checker, nid: str, raw, path: tuple, slots: dict[str, Slot]) -> tuple[Branch, ...]:
    if not isinstance(raw, list) or not raw:
        c.fault(path, f"node {nid!r}: 'branches' must be a non-empty list of {{to, when, user, collect}}")
        return ()
    branches = []
    for i, b in enumerate(raw):
        bpath = path + (i,)
        what = f"node {nid!r} branch {i + 1}"
        if not isinstance(b, dict):
            c.fault(bpath, f"{what} must be a mapping with 'to', not {_shown(b)}")
            continue
        c.unknown_keys(b, BRANCH_KEYS, bpath, what)
        to = b.get("to")
        if not isinstance(to, str) or not ID.fullmatch(to):
            c.fault(bpath + ("to",) if "to" in b else bpath, f"{what} needs 'to' (a node id), not {_shown(to)}")
            continue
        when = c.text(b.get("when"), bpath + ("when",), f"{what}: 'when'") if b.get("when") is not None else ""
        b_user = c.texts(b.get("user"), bpath + ("user",), f"{what}: 'user'")
        _check_templates(c, b_user, bpath + ("user",), slots, f"{what} user line")
        b_collect = _collect(c, b.get("collect"), bpath + ("collect",), slots, what)
        branches.append(Branch(to, when, b_user, b_collect))
    return tuple(branches)


def _collect(c: _Checker, raw, path, slots, owner) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        c.fault(path, f"{owner}: 'collect' must be a list of slot names")
        return ()
    out = []
    for i, name in enumerate(raw):
        if not isinstance(name, str) or name not in slots:
            c.fault(path + (i,), f"{owner}: collects {name!r}, which is not a declared slot")
        else:
            out.append(name)
    return tuple(out)


def reachable(wf: Workflow, start: str) -> set[str]:
    """Nodes reachable from ``start``."""
    seen, queue = {start}, deque([start])
    while queue:
        for e in wf.out_edges(queue.popleft()):
            if e.target not in seen:
                seen.add(e.target)
                queue.append(e.target)
    return seen


def _can_end(wf: Workflow, assumed: set[str]) -> set[str]:
    """Nodes from which a terminal (or a node in ``assumed``) can be reached."""
    incoming: dict[str, list[str]] = {}
    for e in wf.edges:
        incoming.setdefault(e.target, []).append(e.source)
    ends = {n.id for n in wf.nodes.values() if n.is_terminal} | set(assumed)
    queue = deque(ends)
    while queue:
        for src in incoming.get(queue.popleft(), ()):
            if src not in ends:
                ends.add(src)
                queue.append(src)
    return ends
