"""Scenarios: what one synthetic user wants, fixed before any conversation is rendered.

A scenario is a path through the workflow (the branch taken at each visit of each decision
point), a value for every slot, the user's corrections, where the user goes off-script, and which
phrasing pool the user speaks from. The teacher renders a scenario into a training conversation;
evaluation replays the same scenario against the compiled model with a scripted user.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import hashlib
import json
import random
from dataclasses import asdict, dataclass, field

from subterra.offscript import KINDS
from subterra.phrasing import SEEN, UNSEEN, VALIDATION
from subterra.slot_values import SlotValueSource

if TYPE_CHECKING:
    from subterra.workflow import Workflow

SPLITS = ("train", "validation", "holdout", "test_unseen")
# validation: every choice (settings, runtime rules, repair, the promotion gate) is made on it;
# holdout (seen phrasings, unseen values) and test_unseen (held-back phrasings) are test sets no
# decision reads; the natural test set (subterra.natural) is written by people, not generated
PERSONAS = (  # who the user is, for a model that writes or plays the user's side
    "a busy professional who writes short, clipped messages",
    "a friendly retiree who writes full, polite sentences",
    "a non-native English speaker who writes simple sentences",
    "a slightly anxious first-time customer who over-explains",
    "a student who writes casually, in lower case, without much punctuation",
    "a direct customer who wants to get it done quickly",
    "a chatty customer who adds small asides",
    "a careful customer who double-checks what they say",
)


def visit_key(node: str, visit: int) -> str:
    return f"{node}#{visit}"


@dataclass(frozen=True)
class Scenario:
    id: str
    split: str
    path: tuple[str, ...]
    values: dict[str, str]
    corrections: dict[str, str] = field(default_factory=dict)
    offscript: dict[str, str] = field(default_factory=dict)  # visit_key -> kind (subterra.offscript)
    phrasing: str = SEEN
    seed: int = 0
    opening: str = "greeting"  # "greeting": a bare greeting first; "request": the first message answers the start step
    opening_steps: int = 1  # a request: how many steps its first message answers (the start step and those after it)
    noise: float = 0.0  # share of the user's answers typed as people type (subterra.noise); training only

    def choices(self, wf: Workflow) -> dict[str, str]:
        """visit_key(node, visit) -> the edge id the user's reply takes there."""
        edges = {e.id: e for e in wf.edges}
        visits: dict[str, int] = {}
        out = {}
        for edge_id in self.path:
            source = edges[edge_id].source
            visits[source] = visits.get(source, 0) + 1
            out[visit_key(source, visits[source])] = edge_id
        return out

    def to_json(self) -> str:
        data = asdict(self)
        data["path"] = list(self.path)
        return json.dumps(data, sort_keys=True)

    @property
    def persona(self) -> str:
        return PERSONAS[self.seed % len(PERSONAS)]

    @classmethod
    def from_json(cls, text: str) -> "Scenario":
        data = json.loads(text)
        data["path"] = tuple(data["path"])
        return cls(**data)


def path_visit_keys(wf: Workflow, path) -> list[str]:
    """visit_key of every node a path arrives at, in order (start first, terminal last)."""
    edges = {e.id: e for e in wf.edges}
    nodes = [wf.start] + [edges[e].target for e in path]
    visits: dict[str, int] = {}
    keys = []
    for node in nodes:
        visits[node] = visits.get(node, 0) + 1
        keys.append(visit_key(node, visits[node]))
    return keys


def collected_before(wf: Workflow, path) -> list[set[str]]:
    """For each node arrival on the path, the slots the user has provided before that arrival."""
    edges = {e.id: e for e in wf.edges}
    known: set[str] = set()
    out = [set()]
    for edge_id in path:
        edge = edges[edge_id]
        known |= set(wf.nodes[edge.source].collect) | set(edge.collect)
        out.append(set(known))
    return out


def make_scenario(
    wf: Workflow,
    path,
    split: str,
    index: int,
    seed: int,
    offscript_rate: float,
    random_value_rate: float = 0.0,
    correction_share: float | None = None,
    request_share: float = 0.0,
    request_steps: int = 1,
) -> Scenario:
    """A seeded scenario on ``path`` for ``split``; the test splits draw reserved slot values only,
    validation its own ones (``subterra.slot_values``). ``request_share`` of them open with the
    request itself (the start step's answer in the first message) instead of a bare greeting, and
    answer from 1 to ``request_steps`` steps of the path in it (drawn alike; never its ending).

    An off-script turn is of each possible kind (``subterra.offscript``) alike, or, with
    ``correction_share``, a correction (where one is possible) that often and otherwise one of the others."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    scenario_seed = int.from_bytes(
        hashlib.sha256(f"{wf.id}|{split}|{index}|{seed}|{'/'.join(path)}".encode()).digest()[:8], "big"
    )
    rng = random.Random(scenario_seed)
    rate = random_value_rate if split == "train" else 0.0
    sources = {name: SlotValueSource.for_slot(slot) for name, slot in wf.slots.items()}
    values = {name: src.draw(rng, split, rate) for name, src in sources.items()}
    corrections = {name: src.different(rng, split, values[name], rate) for name, src in sources.items()}
    keys = path_visit_keys(wf, path)
    known = collected_before(wf, path)
    opening = "request" if request_share > 0 and random.Random(scenario_seed ^ 0x0BE7).random() < request_share else "greeting"
    # its own draw: request_steps 1 leaves every scenario as it was
    steps = 1 + random.Random(scenario_seed ^ 0x57E95).randrange(request_steps) if opening == "request" else 1
    steps = max(1, min(steps, len(keys) - 1))
    offscript: dict[str, str] = {}
    for key, slots_known, node in zip(keys[:-1], known[:-1], [k.split("#")[0] for k in keys[:-1]]):
        if rng.random() >= offscript_rate or (opening == "request" and key in keys[:steps]):
            continue
        # a correction needs a slot the user already gave whose correction differs
        correctable = any(corrections[s] != values[s] for s in slots_known)
        kinds = [k.name for k in KINDS.values() if correctable or not k.corrects]
        correcting = [k for k in kinds if KINDS[k].corrects]
        if correction_share is not None and correcting:
            others = [k for k in kinds if not KINDS[k].corrects]
            if rng.random() < correction_share or not others:
                offscript[key] = correcting[0] if len(correcting) == 1 else rng.choice(correcting)  # drawn only among several
            else:
                offscript[key] = rng.choice(others)
        else:
            offscript[key] = rng.choice(kinds)
    return Scenario(
        id=f"{split}-{index:05d}",
        split=split,
        path=tuple(path),
        values=values,
        corrections=corrections,
        offscript=offscript,
        phrasing={"test_unseen": UNSEEN, "validation": VALIDATION}.get(split, SEEN),
        seed=scenario_seed,
        opening=opening,
        opening_steps=steps,
    )
