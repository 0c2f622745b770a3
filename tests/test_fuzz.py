"""Fuzzing the workflow loader and validator: whatever a file holds, the answer is a list of faults.

Arbitrary text and bytes, arbitrary YAML documents, valid workflows mutated at the data level,
random flowcharts, and nested or huge documents around the explicit limits. A case that raises
anything but ``WorkflowError`` (with ``Fault``s naming lines of the file), or takes longer than
``HANG_SECONDS``, fails. ``make test`` runs the ``fast`` variant of each (a few hundred cases,
seconds); ``pytest -m slow tests/test_fuzz.py`` runs the ``slow`` one (about 20x more).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from subterra.paths import PathSpaceTooLarge, select_paths
from subterra.workflow import Fault, Workflow, WorkflowError, parse_workflow_text, validate_file
from subterra.yaml_source import MAX_BYTES, MAX_DEPTH
from test_workflow_validation import BASE

MINI = (Path(__file__).parent / "fixtures" / "mini_booking.yaml").read_text()
PATHS_SECONDS = 5.0  # CPU seconds to select paths (or refuse to) for a small workflow
HANG_SECONDS = 30.0  # CPU seconds; the slowest legal file (1 MiB, 30,000 nodes) takes 5-6 s


def fuzz(*strategies, fast: int = 200, slow: int = 4000):
    """A test run twice: ``fast`` examples in ``make test``, ``slow`` examples under ``-m slow``;
    a hang fails it (pytest-timeout)."""

    def wrap(body):
        @pytest.mark.timeout(900)
        @pytest.mark.parametrize(
            "examples", [pytest.param(fast, id="fast"), pytest.param(slow, id="slow", marks=pytest.mark.slow)]
        )
        def test(examples):
            run = settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            run(given(*strategies)(body))()

        test.__name__, test.__doc__ = body.__name__, body.__doc__
        return test

    return wrap


def outcome(text: str, name: str = "demo.yaml") -> Workflow | None:
    """The workflow, or None with faults; anything else (an exception, a hang) fails the case."""
    started = time.process_time()
    try:
        wf = parse_workflow_text(text, name)
    except WorkflowError as exc:
        lines = max(1, len(text.splitlines()) + 1)
        assert exc.faults and all(isinstance(f, Fault) and f.message for f in exc.faults)
        assert all(1 <= f.line <= lines for f in exc.faults), [f for f in exc.faults if not 1 <= f.line <= lines]
        wf = None
    assert time.process_time() - started < HANG_SECONDS
    if wf is not None:  # what the validator accepts, every later stage can take
        snapshot = json.loads(json.dumps(wf.to_dict()))
        assert Workflow.from_dict(snapshot).content_hash == wf.content_hash
        started = time.process_time()
        try:
            select_paths(wf, cap=20, max_states=2_000)
        except PathSpaceTooLarge:
            pass
        assert time.process_time() - started < PATHS_SECONDS
    return wf


# ----------------------------------------------------------------------------------- strategies
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12), st.dates(),
    st.sampled_from(["{city}", "{x.__class__}", "{0}", "{", "}", "~", "yes", "0x1F", "1e400", ".nan", "2027-13-45",
                     "start", "nodes", "end", "success", "greet", "done"]),
)
keys = st.one_of(st.text(max_size=10), st.integers(), st.booleans(), st.sampled_from(
    ["workflow", "assistant", "start", "slots", "nodes", "prompt", "say", "user", "collect", "next", "branches",
     "end", "to", "when", "type", "values", "min", "max", "max_visits", "title"]))
documents = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
                         max_leaves=25)


def dump(data, flow: bool | None = False) -> str:
    return yaml.safe_dump(data, default_flow_style=flow, allow_unicode=True, sort_keys=False)


def key_paths(data, path=()):
    yield path
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        yield from key_paths(value, path + (key,))


VALID = [yaml.safe_load(BASE), yaml.safe_load(MINI)]


@st.composite
def mutated(draw):
    """A valid workflow (the test base or the mini fixture) with 1-4 data-level edits."""
    index = draw(st.sampled_from([0, 1]))
    doc = copy.deepcopy(VALID[index])
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(list(key_paths(doc))[1:]))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "rename", "insert", "swap_type"]))
        if action == "replace":
            parent[path[-1]] = draw(documents)
        elif action == "delete":
            del parent[path[-1]]
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(keys)] = parent.pop(path[-1])
        elif action == "insert" and isinstance(parent[path[-1]], dict):
            parent[path[-1]][draw(keys)] = draw(documents)
        elif action == "swap_type":
            value = parent[path[-1]]
            parent[path[-1]] = [value] if not isinstance(value, list) else (value[0] if value else None)
        if not isinstance(doc, dict) or not doc:
            break
    return ("demo.yaml", "mini_booking.yaml")[index], dump(doc, draw(st.sampled_from([False, None])))


@st.composite
def flowcharts(draw):
    """A random flowchart of 2-14 nodes with up to 10 visits: any exits, or a ring (one big loop)
    with extra exits, the shape whose visit counts explode."""
    n = draw(st.integers(2, 14))
    names = [f"n{i}" for i in range(n)]
    ring = draw(st.booleans())
    nodes = {}
    for i, name in enumerate(names):
        targets = draw(st.lists(st.sampled_from(names), max_size=4))
        if ring:
            targets = [names[(i + 1) % n], *targets[:2], "z"]
        node = {"prompt": f"Do {name}."}
        if not targets:
            node["end"] = draw(st.sampled_from(["success", "abandoned", "escalated"]))
        elif len(targets) == 1 and draw(st.booleans()):
            node["next"] = targets[0]
        else:
            node["branches"] = [{"to": t, "when": f"choice {i}"} for i, t in enumerate(targets)]
        nodes[name] = node
    if ring:
        nodes["z"] = {"prompt": "Done.", "end": "success"}
    doc = {"workflow": "demo", "assistant": "A test.", "start": "n0", "max_visits": draw(st.integers(1, 10)), "nodes": nodes}
    return dump(doc)


def nested(depth: int, style: str, leaf: str = "x") -> str:
    """A document nested ``depth`` collections deep, in one of five styles."""
    if style == "flow list":
        return "[" * depth + leaf + "]" * depth
    if style == "flow map":
        return "{a: " * depth + leaf + "}" * depth
    if style == "block list":
        return "".join("  " * i + "-\n" for i in range(depth - 1)) + "  " * (depth - 1) + f"- {leaf}\n" if depth else leaf
    if style == "block map":
        return "".join("  " * i + f"k{i}:\n" for i in range(depth - 1)) + "  " * (depth - 1) + f"k: {leaf}\n" if depth else leaf
    half = depth // 2  # mixed: block mappings holding flow lists
    return "".join("  " * i + f"k{i}:\n" for i in range(half)) + "  " * half + "[" * (depth - half) + leaf + "]" * (depth - half)


HUGE = {  # kind: (head, the i-th repeated unit, tail)
    "flow list": ("[", lambda i: "a,", "a]"),
    "block list": ("", lambda i: "- a\n", ""),
    "unknown keys": ("", lambda i: f"k{i}: 1\n", ""),
    "bad placeholders": ("workflow: demo\nassistant: a\nstart: a\nnodes:\n  a:\n    prompt: p\n    branches:\n",
                         lambda i: "      - {to: b, user: ['{x.y}']}\n", "  b: {prompt: p, end: success}\n"),
    "chain": ("workflow: demo\nassistant: a\nstart: n0\nnodes:\n", lambda i: f"  n{i}: {{prompt: p, next: n{i + 1}}}\n",
              "  n{n}: {prompt: p, end: success}\n"),
    "long text": ("workflow: demo\nassistant: ", lambda i: "a" * 1000, "\n"),
    "comment": ("# ", lambda i: "x" * 1000, "\n"),
}


def huge(kind: str, size: int) -> str:
    """A document of ``size`` bytes or just under, built to be slow: many items, keys, faults or nodes."""
    head, unit, tail = HUGE[kind]
    parts, length, i = [head], len(head) + len(tail) + 16, 0
    while length + len(unit(i)) <= size:
        parts.append(unit(i))
        length += len(parts[-1])
        i += 1
    return "".join(parts) + tail.replace("{n}", str(i))


# ------------------------------------------------------------------------------------- the tests
@fuzz(st.text(st.characters(codec="utf-8")), fast=300, slow=6000)
def test_any_text_gives_faults(text):
    """Any Unicode text (control characters, BOMs, NULs, any script) gives faults, never an exception."""
    outcome(text)


@fuzz(st.lists(st.sampled_from(list("ab:-[]{}!&*|>'\"#\n \t%@`,?0") + ["  ", "!!python/object:os.system ", "<<: ", "nodes:",
                                                                       "next: "]), max_size=80).map("".join), fast=200, slow=6000)
def test_yaml_token_soup_gives_faults(text):
    """Text made of YAML's own punctuation, indentation, tags and keys."""
    outcome(text)


@fuzz(st.data(), fast=150, slow=4000)
def test_any_line_edit_of_a_valid_workflow_gives_faults(data):
    """The test base with lines dropped, duplicated, cut short or swapped."""
    lines = BASE.splitlines(keepends=True)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(lines) - 1))
        action = data.draw(st.sampled_from(["drop", "duplicate", "cut", "swap"]))
        if action == "drop" and len(lines) > 1:
            del lines[i]
        elif action == "duplicate":
            lines.insert(i, lines[i])
        elif action == "cut":
            lines[i] = lines[i][: data.draw(st.integers(0, len(lines[i])))] + "\n"
        elif action == "swap":
            j = data.draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
    outcome("".join(lines))


@fuzz(st.binary(max_size=300) | st.text(max_size=200).map(lambda t: t.encode("utf-16")) | st.just(b"\xef\xbb\xbf" + BASE.encode()))
def test_any_bytes_on_disk_give_faults(raw):
    """Any bytes in a file (not UTF-8, UTF-16, a BOM) give faults from ``validate_file``."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "demo.yaml"
        path.write_bytes(raw)
        faults = validate_file(path)
    assert all(isinstance(f, Fault) and f.line >= 1 for f in faults)


@fuzz(documents, st.sampled_from([False, True, None]), st.booleans(), fast=200, slow=5000)
def test_any_yaml_document_gives_faults(data, flow, canonical):
    """Any YAML document (any keys, any scalars, block, flow or canonical style with explicit tags)."""
    text = yaml.safe_dump(data, default_flow_style=flow, canonical=canonical, allow_unicode=True)
    outcome(text)


@fuzz(mutated(), fast=150, slow=4000)
def test_any_mutation_of_a_valid_workflow_gives_faults(case):
    """A valid workflow with values replaced, keys deleted, renamed or added, types swapped."""
    outcome(case[1], case[0])


@fuzz(flowcharts(), fast=100, slow=3000)
def test_any_flowchart_validates_and_its_paths_are_bounded(text):
    """Random flowcharts with loops and up to 10 visits: faults, or a workflow whose paths come
    out (or are refused) in bounded time."""
    outcome(text)


@fuzz(st.integers(0, 3 * MAX_DEPTH) | st.integers(MAX_DEPTH, 200_000),
      st.sampled_from(["flow list", "flow map", "block list", "block map", "mixed"]), fast=100, slow=1500)
def test_nesting_past_the_limit_is_exactly_one_fault(depth, style):
    """Any depth, any style: past ``MAX_DEPTH`` exactly one depth fault, below it none."""
    if style != "flow list" and style != "flow map":
        depth = min(depth, 700)  # block nesting grows quadratically: 700 levels is ~0.5 MB
    faults = [] if outcome(nested(depth, style)) else parse_faults(nested(depth, style))
    deep = [f for f in faults if "nesting is deeper" in f.message]
    assert (deep == faults and len(deep) == 1) if depth > MAX_DEPTH else not deep


def parse_faults(text: str) -> list[Fault]:
    try:
        parse_workflow_text(text, "demo.yaml")
    except WorkflowError as exc:
        return exc.faults
    return []


@fuzz(st.sampled_from(["flow list", "block list", "unknown keys", "bad placeholders", "chain", "long text", "comment"]),
      st.integers(1_000, 64_000), fast=20, slow=300)
def test_large_documents_give_faults_in_bounded_time(kind, size):
    outcome(huge(kind, size))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["flow list", "block list", "unknown keys", "bad placeholders", "chain", "long text", "comment"])
@pytest.mark.parametrize("size", [MAX_BYTES, MAX_BYTES + 2000])
def test_documents_at_the_size_limit_give_faults_in_bounded_time(kind, size):
    text = huge(kind, size)
    assert size - 2000 < len(text.encode()) <= size
    wf = outcome(text)
    if len(text.encode()) > MAX_BYTES:
        assert wf is None and "the limit is 1,048,576 bytes" in parse_faults(text)[0].message


@pytest.mark.parametrize("tag", ["!!python/object/apply:os.system", "!!python/object/new:os.system", "!!python/name:os.system",
                                 "!!python/module:os", "!!binary", "!!set", "!!omap", "!!timestamp", "!!map", "!!seq",
                                 "!custom", "!<tag:yaml.org,2002:python/object:os.Popen>", "!!float", "!!int", "!!bool", "!!null"])
@pytest.mark.parametrize("where", ["value", "key", "sequence", "mapping"])
def test_no_yaml_tag_constructs_anything(tag, where):
    """Every explicit tag but ``!!str`` is a fault, wherever it stands, and nothing is built."""
    item = {"value": f"prompt: {tag} ls", "key": f"{tag} prompt: Confirm.", "sequence": f"prompt: {tag} [a, b]",
            "mapping": f"prompt: {tag} {{a: b}}"}[where]
    text = BASE.replace("prompt: Confirm.", item)
    faults = parse_faults(text)
    assert any("is not allowed" in f.message and f.line == 20 for f in faults), faults


def test_dates_and_times_are_the_only_non_text_scalars_built():
    """Implicit YAML types build plain values only (dates, numbers, booleans), never objects."""
    from subterra.yaml_source import load_yaml

    loaded = load_yaml("a: 2027-01-01\nb: 2027-01-01T10:00:00Z\nc: 0x1F\nd: .inf\ne: yes\nf: ~\ng: 1_000\n")
    assert loaded.problems == []
    assert {type(v) for v in loaded.data.values()} <= {str, int, float, bool, type(None), dt.date, dt.datetime}
