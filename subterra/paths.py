"""Paths through a workflow: counted exactly, enumerated lazily, sampled with every edge covered.

A path is the sequence of edges from the start node to a terminal node, passing through no node
more than ``max_visits`` times. Everything here works on the *state graph*: a state is a node plus
the visit counts of the nodes in that node's strongly connected component. A walk can never
return to a component it has left, so only the current component's counts matter; nodes on no
cycle carry no counts at all, so an acyclic workflow's state graph is the workflow itself and a
layered graph with 10^12 paths counts instantly. The state graph is acyclic (every step either
moves to a later component or raises the visit total inside the current one), so path counts are
two dynamic programmes over it: completions ``g`` (backward) and prefixes ``f`` (forward).
Enumeration is a depth-first walk yielding one path at a time; sampling draws paths by rank
(uniform) and, for each edge, a path uniform among those through it.

Paths are never listed to be counted, so a graph with 10^12 of them is fine; what can explode is
the state graph itself, when a large loop allows several visits (a 12-node loop visited up to
three times has ~1.8 million states). Exploration stops at ``MAX_STATES`` with ``PathSpaceTooLarge``,
which says how far it got and what to change, instead of running for hours.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

import networkx as nx
import polars as pl

if TYPE_CHECKING:
    from subterra.workflow import Workflow

Path = tuple[str, ...]  # edge ids in order

MAX_STATES = 100_000  # (node, visit counts) states explored before giving up; real workflows need < 1,000


class PathSpaceTooLarge(ValueError):
    """The workflow's loops allow more states than ``max_states``: refused, never explored for hours."""


def path_id(path: Sequence[str]) -> str:
    """Stable 12-hex id of a path (hash of its edge ids)."""
    return hashlib.sha256("\n".join(path).encode()).hexdigest()[:12]


class StateGraph:
    """The reachable (node, visit counts within its component) states of a workflow, with counts."""

    def __init__(self, wf: Workflow, max_states: int = MAX_STATES):
        self.wf = wf
        self.max_states = max_states
        graph = nx.DiGraph()
        graph.add_nodes_from(wf.nodes)
        graph.add_edges_from((e.source, e.target) for e in wf.edges)
        self._component: dict[str, int] = {}  # which strongly connected component the node is in
        self._members: dict[str, tuple[str, ...]] = {}  # the node's component if it lies on a cycle, else ()
        for i, component in enumerate(nx.strongly_connected_components(graph)):
            members = tuple(sorted(component))
            cyclic = len(members) > 1 or graph.has_edge(members[0], members[0])
            for n in members:
                self._component[n] = i
                self._members[n] = members if cyclic else ()
        self._terminal = {n for n, node in wf.nodes.items() if node.is_terminal}
        self._explore()
        self._count()

    def _explore(self) -> None:
        """Every reachable state, breadth first, with its steps (edge id, next state). Stepping into
        a node on a cycle raises its visit count (counts restart on entering a new component) and
        is refused past ``max_visits``; a node on no cycle carries no counts."""
        wf, component, members_of = self.wf, self._component, self._members
        limit = wf.max_visits
        start = (wf.start, tuple(1 if m == wf.start else 0 for m in members_of[wf.start]))
        self.states: list[tuple[str, tuple[int, ...]]] = [start]
        index = {start: 0}
        self.out: list[list[tuple[str, int]]] = [[]]  # per state: (edge id, target state)
        s = 0
        while s < len(self.states):
            node, visits = self.states[s]
            if node not in self._terminal:
                row = self.out[s]
                for e in wf.out_edges(node):
                    target = e.target
                    members = members_of[target]
                    if members:
                        before = visits if component[node] == component[target] else (0,) * len(members)
                        i = members.index(target)
                        if before[i] >= limit:
                            continue
                        after = before[:i] + (before[i] + 1,) + before[i + 1 :]
                    else:
                        after = ()
                    state = (target, after)
                    t = index.get(state)
                    if t is None:
                        if len(self.states) >= self.max_states:
                            raise self._too_large()
                        t = index[state] = len(self.states)
                        self.states.append(state)
                        self.out.append([])
                    row.append((e.id, t))
            s += 1
        # the state graph is acyclic (every step moves to a later component or raises the visit total
        # in this one): a topological order of it, every state after all the states that step into it
        indegree = [0] * len(self.states)
        for row in self.out:
            for _, t in row:
                indegree[t] += 1
        self.order = [0]  # the start state: nothing steps into it
        for s in self.order:
            for _, t in self.out[s]:
                indegree[t] -= 1
                if indegree[t] == 0:
                    self.order.append(t)

    def _too_large(self) -> PathSpaceTooLarge:
        loops = sorted({m for m in self._members.values() if m}, key=len, reverse=True)
        if loops:
            why = f"its largest loop has {len(loops[0])} nodes; lower max_visits or break the loop into smaller ones"
        else:
            why = f"it has {len(self.wf.nodes):,} nodes and no loop; raise max_states"
        return PathSpaceTooLarge(
            f"{self.wf.id}: the paths pass through more than {self.max_states:,} (node, visit count) states with "
            f"max_visits={self.wf.max_visits} ({why}); paths were not explored"
        )

    def _count(self) -> None:
        self.g = [0] * len(self.states)  # completions from the state to a terminal
        for s in reversed(self.order):
            self.g[s] = 1 if self.states[s][0] in self._terminal else sum(self.g[t] for _, t in self.out[s])

    def _prefixes(self) -> None:
        """Prefix counts ``f`` (from the start state to each state) and incoming steps ``into``:
        only sampling needs them, so they are computed on first use."""
        n = len(self.states)
        self._f = [0] * n
        self._f[0] = 1
        self._into: list[list[tuple[str, int]]] = [[] for _ in range(n)]
        for s in self.order:
            for eid, t in self.out[s]:
                self._f[t] += self._f[s]
                self._into[t].append((eid, s))

    @property
    def f(self) -> list[int]:
        if "_f" not in self.__dict__:
            self._prefixes()
        return self._f

    @property
    def into(self) -> list[list[tuple[str, int]]]:
        if "_into" not in self.__dict__:
            self._prefixes()
        return self._into

    @property
    def total(self) -> int:
        return self.g[0]

    def completion(self, state: int, rank: int) -> list[str]:
        """The ``rank``-th completion from ``state`` in depth-first (file) order of the edges."""
        edges: list[str] = []
        while self.out[state]:
            for eid, t in self.out[state]:
                if rank < self.g[t]:
                    edges.append(eid)
                    state = t
                    break
                rank -= self.g[t]
        return edges

    def unrank(self, rank: int) -> Path:
        """The ``rank``-th path in the order of ``iter_paths`` (0 <= rank < total)."""
        return tuple(self.completion(0, rank))

    def prefix(self, state: int, rng: random.Random) -> list[str]:
        """A prefix from the start to ``state``, uniform among all such prefixes."""
        edges: list[str] = []
        while state != 0:
            pick = rng.randrange(self.f[state])
            for eid, s in self.into[state]:
                if pick < self.f[s]:
                    break
                pick -= self.f[s]
            edges.append(eid)
            state = s
        edges.reverse()
        return edges

    def through(self, edge_id: str, rng: random.Random) -> Path | None:
        """A path through the edge, uniform among the paths through it; None if there is none."""
        options = [(s, t, self.f[s] * self.g[t]) for s in range(len(self.states)) for eid, t in self.out[s] if eid == edge_id]
        weight = sum(w for _, _, w in options)
        if not weight:
            return None
        pick = rng.randrange(weight)
        for s, t, w in options:
            if pick < w:
                break
            pick -= w
        return tuple(self.prefix(s, rng) + [edge_id] + self.completion(t, rng.randrange(self.g[t])))

    def walk(self) -> Iterator[Path]:
        """Every path, depth first in file order of the edges, skipping dead ends."""
        if not self.g[0]:
            return
        edges: list[str] = []
        stack: list[tuple[int, int]] = [(0, 0)]
        while stack:
            s, i = stack[-1]
            out = self.out[s]
            if not out:
                yield tuple(edges)
            while i < len(out) and not self.g[out[i][1]]:
                i += 1
            if i >= len(out):
                stack.pop()
                if edges:
                    edges.pop()
                continue
            stack[-1] = (s, i + 1)
            eid, t = out[i]
            edges.append(eid)
            stack.append((t, 0))


def count_paths(wf: Workflow, max_states: int = MAX_STATES) -> int:
    """Exact number of paths, without enumerating them; ``PathSpaceTooLarge`` past ``max_states``."""
    return StateGraph(wf, max_states).total


def iter_paths(wf: Workflow, max_states: int = MAX_STATES) -> Iterator[Path]:
    """Every path, one at a time, depth first in file order of the edges."""
    return StateGraph(wf, max_states).walk()


def path_nodes(wf: Workflow, path: Sequence[str]) -> tuple[str, ...]:
    """The start node, then the target of each edge of the path."""
    targets = {e.id: e.target for e in wf.edges}
    return (wf.start,) + tuple(targets[e] for e in path)


def edge_coverage(wf: Workflow, paths) -> set[str]:
    """Edge ids that at least one of the paths takes."""
    return {e for p in paths for e in p}


@dataclass
class PathSelection:
    paths: list[Path]
    total: int
    sampled: bool


def select_paths(wf: Workflow, cap: int = 5000, seed: int = 0, max_states: int = MAX_STATES) -> PathSelection:
    """All paths if there are at most ``cap``; else a deterministic sample covering every edge.

    ``PathSpaceTooLarge`` if the loops allow more than ``max_states`` states.

    The sample takes, for each edge in file order not yet covered, one path uniform among the paths
    through it, then fills up to ``cap`` with distinct paths drawn uniformly by rank.
    """
    space = StateGraph(wf, max_states)
    total = space.total
    if total <= cap:
        return PathSelection(list(space.walk()), total, False)
    rng = random.Random(seed)
    chosen: dict[Path, None] = {}
    covered: set[str] = set()
    for edge in wf.edges:
        if len(chosen) >= cap:
            break
        if edge.id in covered:
            continue
        path = space.through(edge.id, rng)
        if path is not None:
            chosen[path] = None
            covered.update(path)
    missing = cap - len(chosen)
    if missing > 0 and total <= 2 * cap:  # dense: draw from the few remaining paths directly
        rest = [p for p in space.walk() if p not in chosen]
        chosen.update((p, None) for p in rng.sample(rest, missing))
    while len(chosen) < cap:  # sparse: at least half of all draws are new
        chosen[space.unrank(rng.randrange(total))] = None
    return PathSelection(list(chosen), total, True)


PATHS_SCHEMA = {"workflow": pl.String, "path_id": pl.String, "edges": pl.List(pl.String), "nodes": pl.List(pl.String),
                "n_edges": pl.Int64, "terminal": pl.String, "outcome": pl.String}


def paths_table(wf: Workflow, selection: PathSelection) -> pl.DataFrame:
    """One row per selected path: workflow, path_id, edges, nodes, n_edges, terminal, outcome."""
    rows = []
    for path in selection.paths:
        nodes = path_nodes(wf, path)
        rows.append(
            {
                "workflow": wf.id,
                "path_id": path_id(path),
                "edges": list(path),
                "nodes": list(nodes),
                "n_edges": len(path),
                "terminal": nodes[-1],
                "outcome": wf.nodes[nodes[-1]].end,
            }
        )
    return pl.DataFrame(rows, schema=PATHS_SCHEMA)


def paths_from_table(df: pl.DataFrame) -> list[Path]:
    """The paths of a ``paths_table`` (in row order)."""
    return [tuple(edges) for edges in df["edges"].to_list()]
