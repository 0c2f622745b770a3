"""Natural conversations: user lines written by people, independently of the workflow's own lines.

A natural set is a YAML file (``data/natural/test/WORKFLOW.yaml`` for the ``natural`` test set,
``data/natural/validation/WORKFLOW.yaml`` for the natural part of ``validation``) of conversations
played as *scripts*: the user's lines are fixed, and every line says the step the agent must take
next (``node``) and the values it must hold from that line (``slots``, in the slot's canonical
form: integers as digits, dates as ``14 March 2027``, an enum's value as the workflow spells it).
Each conversation is played twice: opening with its bare ``greeting`` (the agent's first turn
must be the start step, holding nothing), and with its first line as the opening message (the
request itself). A conversation passes when every turn fits; it stops at its first wrong turn.

File format::

    workflow: travel_booking
    today: 2027-03-01            # the conversations' date: "next Friday" is anchored here
    conversations:
      - id: tb-001
        greeting: hey there
        turns:
          - user: I need a flight to Porto
            node: ask_origin
            slots: {destination: Porto}
          - user: out of dublin
            node: ask_dates
            slots: {origin: dublin}
          ...

Where two branches of a step lead to the same next step (a cracked or a chipped windscreen both go
to booking the repair), a turn may say which one its line takes with ``branch: N`` (the branch's
place among the step's ``branches``, from 0); it only counts the line for that edge.

The expected node is the step a careful person following the flowchart would take next: the next
step that still needs something from the user (a step whose values are all held, or a decision the
user's words already decided, is skipped); an unclear line, a question back or an aside keeps the
agent at the step it is at, holding nothing new. The last turn's node is a terminal step.

``python -m subterra.natural FILE...`` checks files and prints how many lines take each edge.
"""

from __future__ import annotations

import datetime as dt
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from subterra.workflow import Fault, Workflow, WorkflowError, load_workflow, reachable
from subterra.yaml_source import load_yaml

NATURAL_DIR = Path("data/natural")
TEST, VALIDATION = "test", "validation"
OPENINGS = ("greeting", "request")  # the two ways each conversation is played


@dataclass(frozen=True)
class NaturalTurn:
    user: str
    node: str
    slots: dict[str, str] = field(default_factory=dict)
    line: int = 0
    branch: int | None = None  # which of the previous step's branches the line takes, where two lead to ``node``


@dataclass(frozen=True)
class NaturalConversation:
    id: str
    greeting: str
    turns: tuple[NaturalTurn, ...]
    line: int = 0

    def script(self, start: str, opening: str) -> tuple[NaturalTurn, ...]:
        """The turns as played: with ``opening`` ``greeting`` the bare greeting comes first and the
        agent must answer it at the ``start`` step; with ``request`` the first line opens."""
        if opening == "greeting":
            return (NaturalTurn(self.greeting, start, {}, self.line),) + self.turns
        if opening == "request":
            return self.turns
        raise ValueError(f"opening must be one of {OPENINGS}, not {opening!r}")


@dataclass(frozen=True)
class NaturalSet:
    workflow: str
    today: dt.date
    conversations: tuple[NaturalConversation, ...]
    source: str = ""
    start: str = ""  # the workflow's start step (a greeting-first script's first expected step)


# the eval set each kind of natural file plays as
SET_OF = {TEST: "natural", VALIDATION: "validation_natural"}


def natural_path(workflow_id: str, kind: str, root: Path | str = NATURAL_DIR) -> Path:
    return Path(root) / kind / f"{workflow_id}.yaml"


def load_natural_sets(wf: Workflow, root: Path | str = NATURAL_DIR) -> tuple[dict[str, NaturalSet], list[str]]:
    """The workflow's natural sets that exist, by eval set name (``natural``,
    ``validation_natural``), and the problems of those that could not be read (``file:line:
    message``, so a broken or outdated file is reported and skipped, never fatal)."""
    sets, problems = {}, []
    for kind, name in SET_OF.items():
        path = natural_path(wf.id, kind, root)
        if not path.exists():
            continue
        try:
            sets[name] = load_natural(path, wf)
        except WorkflowError as exc:
            problems.extend(str(f) for f in exc.faults)
    return sets, problems


class ScriptUser:
    """Plays a natural conversation's fixed lines: the next line after each agent turn that took
    the step the script expects, nothing (the conversation stops) after one that did not."""

    def __init__(self, turns):
        self.turns = tuple(turns)
        self.i = 0

    def _turn(self):
        from subterra.simulator import UserTurn

        t = self.turns[self.i]
        return UserTurn(t.user, "answer", dict(t.slots), None)

    def opener(self):
        return self._turn()

    def reply(self, node_id: str, say: str = ""):
        if node_id != self.turns[self.i].node or self.i + 1 >= len(self.turns):
            return None
        self.i += 1
        return self._turn()


def normalise(value: str) -> str:
    """How an expected value is compared with a held one: case, surrounding spaces and
    punctuation, and inner runs of spaces do not count."""
    return re.sub(r"\s+", " ", str(value)).strip().strip(".,!?;:'\"").strip().casefold()


def load_natural(path: Path | str, wf: Workflow) -> NaturalSet:
    """Read and check a natural set against its workflow; ``WorkflowError`` lists every fault as
    ``file:line: message``."""
    path = Path(path)
    name = str(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WorkflowError([Fault(name, 1, f"not UTF-8 text (byte {exc.start})")]) from None
    loaded = load_yaml(text)
    faults = [Fault(name, line, msg) for line, msg in loaded.problems]
    if faults:
        raise WorkflowError(faults)
    data = loaded.data

    def fault(key_path, message):
        faults.append(Fault(name, loaded.line(*key_path), message))

    if not isinstance(data, dict):
        raise WorkflowError([Fault(name, 1, "a natural set is a mapping with workflow, today, conversations")])
    for key in data:
        if key not in ("workflow", "today", "conversations"):
            fault((key,), f"unknown key {key!r} (allowed: workflow, today, conversations)")
    if data.get("workflow") != wf.id:
        fault(("workflow",), f"workflow is {data.get('workflow')!r}, expected {wf.id!r}")
    today = data.get("today")
    if isinstance(today, str):
        try:
            today = dt.date.fromisoformat(today)
        except ValueError:
            today = None
    if not isinstance(today, dt.date):
        fault(("today",), "today must be a date (YYYY-MM-DD)")
        today = dt.date(2027, 1, 1)
    raw = data.get("conversations")
    if not isinstance(raw, list) or not raw:
        fault(("conversations",), "conversations must be a non-empty list")
        raise WorkflowError(faults)
    conversations, ids = [], set()
    for i, conv in enumerate(raw):
        where = ("conversations", i)
        if not isinstance(conv, dict):
            fault(where, "a conversation is a mapping with id, greeting, turns")
            continue
        for key in conv:
            if key not in ("id", "greeting", "turns"):
                fault(where + (key,), f"unknown key {key!r} (allowed: id, greeting, turns)")
        cid = conv.get("id")
        if not isinstance(cid, str) or not cid:
            fault(where + ("id",), "id must be a non-empty text")
            cid = f"#{i + 1}"
        elif cid in ids:
            fault(where + ("id",), f"duplicate conversation id {cid!r}")
        ids.add(cid)
        greeting = conv.get("greeting")
        if not isinstance(greeting, str) or not greeting.strip():
            fault(where + ("greeting",), f"{cid}: greeting must be a non-empty text")
            greeting = "hi"
        turns = []
        raw_turns = conv.get("turns")
        if not isinstance(raw_turns, list) or not raw_turns:
            fault(where + ("turns",), f"{cid}: turns must be a non-empty list")
            continue
        previous = wf.start
        for j, turn in enumerate(raw_turns):
            tw = where + ("turns", j)
            if not isinstance(turn, dict):
                fault(tw, f"{cid}: a turn is a mapping with user, node, slots")
                continue
            for key in turn:
                if key not in ("user", "node", "slots", "branch"):
                    fault(tw + (key,), f"{cid}: unknown key {key!r} in a turn (allowed: user, node, slots, branch)")
            user, node, slots = turn.get("user"), turn.get("node"), turn.get("slots") or {}
            branch = turn.get("branch")
            if not isinstance(user, str) or not user.strip():
                fault(tw + ("user",), f"{cid}: user must be a non-empty text")
                continue
            if node not in wf.nodes:
                fault(tw + ("node",), f"{cid}: unknown node {node!r}")
                continue
            if not isinstance(slots, dict):
                fault(tw + ("slots",), f"{cid}: slots must be a mapping of slot names to values")
                slots = {}
            clean = {}
            for slot, value in slots.items():
                if slot not in wf.slots:
                    fault(tw + ("slots", slot), f"{cid}: unknown slot {slot!r}")
                    continue
                problem = _value_problem(wf.slots[slot], value)
                if problem:
                    fault(tw + ("slots", slot), f"{cid}: {slot} {value!r}: {problem}")
                clean[slot] = _canonical(value)
            if node != previous and node not in reachable(wf, previous):
                fault(tw + ("node",), f"{cid}: {node!r} cannot follow {previous!r} in the workflow")
            if branch is not None:
                branches = wf.nodes[previous].branches
                if isinstance(branch, bool) or not isinstance(branch, int) or not 0 <= branch < len(branches):
                    fault(tw + ("branch",), f"{cid}: branch must be the number of one of {previous!r}'s {len(branches)} branches (from 0)")
                    branch = None
                elif branches[branch].to != node:
                    fault(tw + ("branch",), f"{cid}: branch {branch} of {previous!r} goes to {branches[branch].to!r}, not {node!r}")
                    branch = None
            if wf.nodes[previous].is_terminal:
                fault(tw, f"{cid}: a turn after the terminal step {previous!r}")
            turns.append(NaturalTurn(user.strip(), node, clean, loaded.line(*tw), branch))
            previous = node
        if turns and not wf.nodes[turns[-1].node].is_terminal:
            fault(where + ("turns",), f"{cid}: the last turn's node {turns[-1].node!r} is not a terminal step")
        conversations.append(NaturalConversation(cid, greeting.strip(), tuple(turns), loaded.line(*where)))
    if faults:
        raise WorkflowError(faults)
    return NaturalSet(wf.id, today, tuple(conversations), name, wf.start)


def _canonical(value) -> str:
    if isinstance(value, dt.date):
        return f"{value.day} {value.strftime('%B')} {value.year}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value).strip()


def _value_problem(slot, value) -> str | None:
    text = _canonical(value)
    if not text:
        return "empty value"
    if slot.type == "integer" and not re.fullmatch(r"-?\d+", text):
        return "an integer slot's value is written as digits"
    if slot.type == "date":
        try:
            dt.datetime.strptime(text, "%d %B %Y")
        except ValueError:
            return "a date slot's value is written like 14 March 2027"
    if slot.type == "number" and not re.fullmatch(r"-?\d+\.\d\d", text):
        return "a number slot's value is written with two decimals (1234.50)"
    if slot.type == "enum" and text not in slot.values:
        return f"not one of the enum's values ({', '.join(slot.values)})"
    if slot.type == "boolean" and text not in ("yes", "no"):
        return "a boolean slot's value is yes or no"
    return None


def turn_edges(wf: Workflow, conversation: NaturalConversation) -> list[str | None]:
    """The edge each turn takes (None for a turn that stays, or skips steps): the turn's ``branch``
    if it names one, else of the edges from the previous step to the turn's step the one whose
    collected slots the turn gives (the first of those that tie)."""
    out, previous = [], wf.start
    for turn in conversation.turns:
        direct = [e for e in wf.out_edges(previous) if e.target == turn.node]
        named = [e for e in direct if e.kind == "branch" and e.index == turn.branch]
        if named:
            out.append(named[0].id)
        elif not direct:
            out.append(None)
        else:
            def fit(e):
                wanted = set(e.collect) | set(wf.nodes[previous].collect)
                return (len(wanted & set(turn.slots)) - len(wanted - set(turn.slots)), -e.index)
            out.append(max(direct, key=fit).id)
        previous = turn.node
    return out


def edge_coverage(wf: Workflow, natural: NaturalSet) -> Counter:
    """How many lines take each edge of the workflow (every edge listed, 0 if none)."""
    counts = Counter({e.id: 0 for e in wf.edges})
    for conv in natural.conversations:
        counts.update(e for e in turn_edges(wf, conv) if e)
    return counts


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m subterra.natural data/natural/{test,validation}/WORKFLOW.yaml ...", file=sys.stderr)
        return 2
    status = 0
    for arg in argv:
        path = Path(arg)
        # the workflow beside its natural sets (NAME/natural/test/ID.yaml -> NAME/workflows/ID.yaml), else data/workflows
        beside = path.resolve().parent.parent.parent / "workflows" / path.name
        wf = load_workflow(beside if beside.exists() else Path("data/workflows") / path.name)
        try:
            natural = load_natural(path, wf)
        except WorkflowError as exc:
            print(exc, file=sys.stderr)
            status = 1
            continue
        coverage = edge_coverage(wf, natural)
        turns = sum(len(c.turns) for c in natural.conversations)
        print(f"{path}: {len(natural.conversations)} conversations, {turns} lines; lines per edge:")
        for edge, n in sorted(coverage.items(), key=lambda kv: (kv[1], kv[0])):
            print(f"  {n:3d}  {edge}")
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
