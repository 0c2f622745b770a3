"""How many training conversations each path gets, sized from the workflow.

A uniform share per path (``conversations_per_path``, capped by ``max_train_conversations``) leaves
a small workflow under-trained (23 paths x 8 = 184 conversations) and an edge that only one path
takes with 8 examples, while a workflow with thousands of paths gets one conversation per path
and more than its budget. ``train_counts`` sizes the training set in three passes:

1. every edge taken by one training conversation at least (past the budget if need be);
2. coverage: every edge taken by at least ``edge_floor`` training conversations, and every enum
   slot given in at least ``value_floor`` conversations per declared value (values are drawn per
   conversation, so each gets about its share), within ``max_train_conversations``; the rarest
   requirement first, each given to the paths through it that have the fewest conversations;
3. the rest of the target (``target_total``: the uniform corpus, at least
   ``min_train_conversations``, at most ``max_train_conversations``) spread level by level over
   the paths with the fewest conversations, so the common paths share what coverage left.

A path's conversations are numbered from 0 and seeded by path and number, so a path keeps its
first conversations whatever the others get (an incremental recompile reuses them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from subterra.workflow import Workflow


HELDOUT_PER_PATH = 2  # each path played about twice per held-out set
HELDOUT_FLOOR = 100  # a 95% interval no wider than +-10 points, however few the paths
HELDOUT_CAP = 200  # +-7 points at most; more paths share the 200 (every path played once up to 200 paths)


def heldout_size(n_paths: int) -> int:
    """Scenarios per held-out set (validation, holdout, test_unseen) for a workflow of ``n_paths``
    paths: a 4-path workflow is not played 600 times, a 100-path one still gets its 200."""
    return min(HELDOUT_CAP, max(HELDOUT_FLOOR, HELDOUT_PER_PATH * n_paths))


def target_total(n_paths: int, config) -> int:
    """The training conversations a corpus aims for before coverage top-ups."""
    uniform = n_paths * config.conversations_per_path
    return min(config.max_train_conversations, max(config.min_train_conversations, uniform))


def requirements(wf: Workflow, paths: Sequence[Sequence[str]], edge_floor: int, value_floor: int) -> list[tuple[list[int], int]]:
    """(the paths that serve it, how many conversations it needs) per edge and per enum slot."""
    edges = {e.id: e for e in wf.edges}
    through: dict[str, list[int]] = {}
    collecting: dict[str, list[int]] = {}
    enums = {name for name, slot in wf.slots.items() if slot.type == "enum" and slot.values}
    for i, path in enumerate(paths):
        slots: set[str] = set()
        for edge_id in dict.fromkeys(path):
            through.setdefault(edge_id, []).append(i)
            edge = edges.get(edge_id)
            if edge is not None:
                slots.update(s for s in wf.edge_slots(edge) if s in enums)
        for s in slots:
            collecting.setdefault(s, []).append(i)
    out = [(served, edge_floor) for served in through.values()]
    out += [(served, value_floor * len(wf.slots[s].values)) for s, served in collecting.items()]
    return out


def train_counts(wf: Workflow, paths: Sequence[Sequence[str]], config) -> list[int]:
    """Training conversations per path (``config``: a ``CorpusConfig``)."""
    n = len(paths)
    if n == 0:
        return []
    if config.sizing == "uniform":
        per_path = config.conversations_per_path
        if n * per_path > config.max_train_conversations:
            per_path = max(1, config.max_train_conversations // n)
        return [per_path] * n
    target = target_total(n, config)
    counts = [0] * n
    needs = requirements(wf, paths, config.edge_floor, config.value_floor)
    needs.sort(key=lambda need: (len(need[0]), -need[1]))  # the rarest first
    serves: list[list[int]] = [[] for _ in range(n)]
    for r, (served, _) in enumerate(needs):
        for p in served:
            serves[p].append(r)
    covered = [sum(counts[p] for p in served) for served, _ in needs]

    total = sum(counts)
    for first in (True, False):  # every requirement once (past the budget if need be), then the floors
        for r, (served, floor) in enumerate(needs):
            want = 1 if first else floor
            least = sorted(served, key=lambda p: (counts[p], p))
            j = 0
            while covered[r] < want and (first or total < config.max_train_conversations):
                p = least[j % len(least)]
                counts[p] += 1
                total += 1
                for other in serves[p]:
                    covered[other] += 1
                j += 1
    if total < target:  # the rest, level by level over the paths with the fewest
        order = sorted(range(n), key=lambda p: (counts[p], p))
        level = counts[order[0]]
        while total < target:
            for p in order:
                if counts[p] <= level and total < target:
                    counts[p] += 1
                    total += 1
            level += 1
    return counts
