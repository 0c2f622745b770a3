"""The workflow validator: every kind of fault, with its line, and no input that makes it raise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from subterra.workflow import (
    Fault,
    Workflow,
    WorkflowError,
    load_workflow,
    parse_workflow_text,
    validate_file,
)
from subterra.yaml_source import MAX_BYTES, MAX_DEPTH

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).parent.parent

# line numbers are referred to by the tests below
BASE = """\
workflow: demo
assistant: You are a demo assistant.
start: greet
slots:
  city: {values: [Oslo, Lima]}
  count: {type: integer, min: 1, max: 5}
nodes:
  greet:
    prompt: Ask where to go.
    say: ["Where to?"]
    collect: [city]
    user: ["To {city}."]
    next: ask
  ask:
    prompt: Ask how many.
    branches:
      - {to: done, when: gives count, collect: [count], user: ["{count} people."]}
      - {to: quit, when: gives up, user: ["Stop."]}
  done:
    prompt: Confirm.
    say: ["{count} seats to {city}, done."]
    end: success
  quit:
    prompt: Say goodbye.
    end: abandoned
"""


def faults_of(text: str, name: str = "demo.yaml") -> list[Fault]:
    try:
        parse_workflow_text(text, name)
    except WorkflowError as exc:
        assert exc.faults and all(isinstance(f, Fault) for f in exc.faults)
        return exc.faults
    return []


def edited(old: str, new: str) -> str:
    assert BASE.count(old) == 1, old
    return BASE.replace(old, new)


def test_the_base_and_the_fixture_are_valid():
    wf = parse_workflow_text(BASE, "demo.yaml")
    assert list(wf.nodes) == ["greet", "ask", "done", "quit"]
    assert wf.nodes["ask"].is_decision and wf.nodes["done"].is_terminal
    assert wf.nodes["ask"].line == 14 and wf.slots["count"].line == 6
    assert [e.id for e in wf.edges] == ["greet>ask", "ask>done#0", "ask>quit#1"]
    assert [e.collect for e in wf.out_edges("ask")] == [("count",), ()]
    assert validate_file(FIXTURES / "mini_booking.yaml") == []


CASES = {
    "yaml syntax": (edited("prompt: Ask how many.", "prompt: Ask how: many"), 15, "YAML syntax error"),
    "duplicate key": (edited("    next: ask\n", "    next: ask\n    next: quit\n"), 14, "duplicate key 'next' (first defined on line 13)"),
    "unknown key": (edited("next: ask", "nxt: ask"), 13, "unknown key 'nxt' in node 'greet' (did you mean 'next'?)"),
    "unknown top-level key": (edited("start: greet", "start: greet\nstrat: greet"), 4, "unknown key 'strat' in the workflow"),
    "unknown target": (edited("next: ask", "next: aks"), 13, "node 'greet' goes to unknown node 'aks'"),
    "unknown branch target": (edited("{to: quit,", "{to: exit,"), 18, "node 'ask' goes to unknown node 'exit'"),
    "unknown start": (edited("start: greet", "start: hello"), 3, "start node 'hello' is not defined"),
    "unreachable node": (BASE + "  orphan:\n    prompt: Nobody comes here.\n    end: success\n", 26,
                         "node 'orphan' cannot be reached from the start node 'greet'"),
    "cannot reach a terminal": (edited("    end: abandoned\n", "    next: quit\n"), 23, "node 'quit' cannot reach any terminal node"),
    "several exits": (edited("    next: ask\n", "    next: ask\n    end: success\n"), 8,
                      "node 'greet' must have exactly one of next, branches or end (has next, end)"),
    "no exit": (edited("    end: abandoned\n", ""), 23, "node 'quit' must have exactly one of next, branches or end (has none)"),
    "empty branches": (edited("""    branches:
      - {to: done, when: gives count, collect: [count], user: ["{count} people."]}
      - {to: quit, when: gives up, user: ["Stop."]}
""", "    branches: []\n"), 16, "node 'ask': 'branches' must be a non-empty list"),
    "branch without to": (edited("{to: quit, when", "{when"), 18, "node 'ask' branch 2 needs 'to'"),
    "bad end kind": (edited("end: abandoned", "end: gave_up"), 25, "'end' must be one of success, abandoned, escalated (got 'gave_up')"),
    "undeclared slot in collect": (edited("collect: [city]", "collect: [town]"), 11, "collects 'town', which is not a declared slot"),
    "undeclared slot in a branch collect": (edited("collect: [count]", "collect: [cnt]"), 17, "node 'ask' branch 1: collects 'cnt'"),
    "undeclared placeholder": (edited('"To {city}."', '"To {town}."'), 12, "placeholder {town} is not a declared slot"),
    "undeclared placeholder in a branch": (edited('"{count} people."', '"{n} people."'), 17, "placeholder {n} is not a declared slot"),
    "unbalanced brace": (edited('"To {city}."', '"To {city."'), 12, "bad braces"),
    "workflow id syntax": (edited("workflow: demo", "workflow: Demo-1"), 1, "workflow id 'Demo-1' is not a valid id"),
    "workflow id is not the stem": (BASE, 1, "workflow id 'demo' must equal the file name's stem 'other'"),
    "node id syntax": (edited("  quit:\n", "  Quit:\n").replace("to: quit", "to: Quit"), 23, "node id 'Quit' is not a valid id"),
    "slot id syntax": (edited("  city: {", "  City: {"), 5, "slot name 'City' is not a valid id"),
    "long id": (edited("  quit:\n", "  " + "q" * 65 + ":\n").replace("to: quit", "to: " + "q" * 65), 23, "is not a valid id"),
    "prompt of the wrong type": (edited("prompt: Confirm.", "prompt: [Confirm, now]"), 20, "node 'done': 'prompt' must be a non-empty text, not a list"),
    "missing prompt": (edited("    prompt: Confirm.\n", ""), 19, "node 'done': 'prompt' is required"),
    "assistant on two lines": (edited("assistant: You are a demo assistant.", 'assistant: "You are\\na demo."'), 2, "'assistant' must be one line"),
    "missing assistant": (edited("assistant: You are a demo assistant.\n", ""), 1, "'assistant' is required"),
    "max_visits of the wrong type": (edited("start: greet", "start: greet\nmax_visits: two"), 4, "'max_visits' must be an integer from 1 to 10"),
    "unknown slot type": (edited("type: integer", "type: int"), 6, "slot 'count' has unknown type 'int'"),
    "min of the wrong type": (edited("min: 1,", "min: one,"), 6, "slot 'count': 'min' must be an integer"),
    "enum without values": (edited("  count: {", "  cabin: {type: enum}\n  count: {"), 6, "enum slot 'cabin' needs 'values'"),
    "min greater than max": (edited("min: 1, max: 5", "min: 5, max: 1"), 6, "slot 'count': min 5 is greater than max 1"),
    "date min greater than max": (edited("  count: {", "  day: {type: date, min: 2027-05-01, max: 2027-01-01}\n  count: {"), 6,
                                  "slot 'day': min 2027-05-01 is greater than max 2027-01-01"),
    "bad date": (edited("  count: {", "  day: {type: date, min: May 1st}\n  count: {"), 6, "slot 'day': 'min' must be an ISO date"),
    "values on an integer slot": (edited("max: 5}", "max: 5, values: [1, 2]}"), 6, "'values' apply to string and enum slots only"),
    "yaml alias": (edited('say: ["Where to?"]', "say: &lines [Where to?]").replace('say: ["{count} seats to {city}, done."]', "say: *lines"), 21,
                   "YAML aliases (*name) are not allowed"),
}


@pytest.mark.parametrize("case", CASES)
def test_each_kind_of_fault_names_its_line(case):
    text, line, message = CASES[case]
    faults = faults_of(text, "other.yaml" if case == "workflow id is not the stem" else "demo.yaml")
    assert any(f.line == line and message in f.message for f in faults), faults


@pytest.mark.parametrize("template", ["{city.__class__}", "{0}", "{city!r}", "{city:>10}", "{}", "{city[0]}"])
def test_placeholders_that_are_not_plain_names_are_faults(template):
    faults = faults_of(edited('"To {city}."', json.dumps(f"To {template}.")))
    assert [(f.line, "must be a plain slot name like {city}" in f.message) for f in faults] == [(12, True)]


def test_every_fault_is_reported_at_once():
    text = BASE.replace("nxt", "").replace("next: ask", "next: aks").replace("collect: [city]", "collect: [town]")
    text = text.replace("end: abandoned", "end: gave_up").replace("min: 1, max: 5", "min: 5, max: 1")
    faults = faults_of(text)
    assert sorted(f.line for f in faults) == [6, 11, 13, 25]
    with pytest.raises(WorkflowError) as caught:
        parse_workflow_text(text, "demo.yaml")
    assert str(caught.value).count("\n") == 3 and "demo.yaml:13: node 'greet' goes to unknown node 'aks'" in str(caught.value)


def test_a_broken_exit_is_not_echoed_as_graph_faults():
    # 'ask' has typo'd targets: only they are reported, not their consequences
    faults = faults_of(edited("{to: done, when", "{to: dnoe, when").replace("{to: quit, when", "{to: qiut, when"))
    assert [f.line for f in faults] == [17, 18]  # not: done and quit unreachable, ask and greet cannot end


def test_duplicate_node_is_a_fault_not_a_silent_overwrite():
    faults = faults_of(BASE + "  done:\n    prompt: Again.\n    end: success\n")
    assert [(f.line, f.message) for f in faults] == [(26, "duplicate key 'done' (first defined on line 19)")]


def test_deep_nesting_is_a_fault_and_never_a_crash():
    for text in ["[" * 100_000, "a: " + "{b: " * 30_000, "- " * 30_000 + "x",
                 "nodes:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, MAX_DEPTH + 5))]:
        faults = faults_of(text)
        assert len(faults) == 1 and f"nesting is deeper than {MAX_DEPTH} levels" in faults[0].message


def test_nesting_up_to_the_limit_is_fine_for_the_parser():
    text = edited('say: ["Where to?"]', "say: " + "[" * (MAX_DEPTH - 3) + '"Where to?"' + "]" * (MAX_DEPTH - 3))
    assert all("nesting" not in f.message for f in faults_of(text))  # a fault about the say type, not the depth


def test_oversized_file_is_a_fault(tmp_path):
    path = tmp_path / "demo.yaml"
    path.write_text(BASE + "# " + "x" * MAX_BYTES + "\n")
    assert validate_file(path) == [Fault(str(path), 1, f"file is {path.stat().st_size:,} bytes; the limit is {MAX_BYTES:,} bytes")]
    assert "the limit is" in faults_of(BASE + "#" + "x" * MAX_BYTES)[0].message


def test_python_tags_are_reported_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    text = edited("prompt: Confirm.", f'prompt: !!python/object/apply:os.system ["touch {marker}"]')
    faults = faults_of(text)
    assert [f.line for f in faults] == [20] and "YAML tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed" in faults[0].message
    assert not marker.exists()
    assert "is not allowed" in faults_of(edited("  quit:\n", "  quit: !!python/object:os.Popen\n"))[0].message


def test_unreadable_and_non_utf8_files_are_faults(tmp_path):
    assert "cannot read the file" in validate_file(tmp_path / "missing.yaml")[0].message
    path = tmp_path / "demo.yaml"
    path.write_bytes(BASE.encode("utf-16"))
    assert "not UTF-8" in validate_file(path)[0].message
    path.write_text("")
    assert [f.message for f in validate_file(path)] == ["the file is empty"]
    path.write_text("- just\n- a list\n")
    assert "must be a mapping" in validate_file(path)[0].message


def test_load_workflow_raises_with_every_fault(tmp_path):
    path = tmp_path / "demo.yaml"
    path.write_text(edited("next: ask", "next: aks"))
    with pytest.raises(WorkflowError) as caught:
        load_workflow(path)
    assert caught.value.faults == [Fault(str(path), 13, "node 'greet' goes to unknown node 'aks'")]
    assert str(caught.value.faults[0]) == f"{path}:13: node 'greet' goes to unknown node 'aks'"
    path.write_text(BASE)
    assert load_workflow(path).source == str(path)


def test_placeholders_lists_plain_names():
    from subterra.phrasing import placeholders

    assert placeholders("{a} and {b}, {{literal}} {a}") == ["a", "b", "a"]
    assert placeholders("no slots") == []


# ------------------------------------------------------------------------------------ hash
def test_content_hash_ignores_comments_whitespace_and_key_order():
    wf = parse_workflow_text(BASE, "demo.yaml")
    reordered = """\
# the same workflow, written differently
nodes:
  greet:
    next: ask          # keys in another order
    user: ['To {city}.']
    collect:
      - city
    say: [Where to?]
    prompt:   Ask where to go.
  ask:
    branches:
      - to: done
        user: ["{count} people."]
        when: gives count
        collect: [count]
      - {when: gives up, to: quit, user: ["Stop."]}
    prompt: Ask how many.
  done: {end: success, say: ["{count} seats to {city}, done."], prompt: Confirm.}
  quit: {prompt: Say goodbye., end: abandoned}
slots:
  count: {max: 5, min: 1, type: integer}
  city:
    values:
      - Oslo
      - Lima
start: greet
assistant: >-
  You are a demo assistant.
workflow: demo
"""
    again = parse_workflow_text(reordered, "demo.yaml")
    assert again.content_hash == wf.content_hash and len(wf.content_hash) == 64
    assert wf.short_hash == wf.content_hash[:16]
    changed = parse_workflow_text(BASE.replace("Ask how many.", "Ask how many travel."), "demo.yaml")
    assert changed.content_hash != wf.content_hash
    moved = parse_workflow_text(BASE.replace("values: [Oslo, Lima]", "values: [Lima, Oslo]"), "demo.yaml")
    assert moved.content_hash != wf.content_hash  # the order of a list is content


def test_to_dict_round_trips_through_json():
    for wf in [parse_workflow_text(BASE, "demo.yaml"), load_workflow(FIXTURES / "mini_booking.yaml")]:
        snapshot = json.loads(json.dumps(wf.to_dict()))
        again = Workflow.from_dict(snapshot)
        assert again.to_dict() == wf.to_dict() and again.content_hash == wf.content_hash
        assert again.edges == wf.edges and list(again.nodes) == list(wf.nodes)


# ------------------------------------------------------------------------------------- CLI
def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "subterra.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_cli_validate_exit_codes_and_output(tmp_path):
    good = FIXTURES / "mini_booking.yaml"
    ok = run_cli("validate", str(good))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = tmp_path / "demo.yaml"
    bad.write_text(edited("next: ask", "nxt: ask"))
    result = run_cli("validate", str(good), str(bad))
    assert result.returncode == 1
    fault_lines = [line for line in result.stdout.splitlines() if line.startswith(str(bad))]
    assert fault_lines == [
        f"{bad}:8: node 'greet' must have exactly one of next, branches or end (has none)",
        f"{bad}:13: unknown key 'nxt' in node 'greet' (did you mean 'next'?)",
    ]
