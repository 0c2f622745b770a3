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
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Iterator, Sequence

import polars as pl

Path = tuple[str, ...]  # edge ids in order


def path_id(path: Sequence[str]) -> str:
    """Stable 12-hex id of a path (hash of its edge ids)."""
    return hashlib.sha256("\n".join(path).encode()).hexdigest()[:12]


class StateGraph:
    """The reachable (node, visit counts within its component) states of a workflow, with counts."""

    def __init__(self, wf):
        self.wf = wf
        self._rank: dict[str, int] = {}  # a topological rank of each node's component
        self._members: dict[str, tuple[str, ...]] = {}  # the node's component if it lies on a cycle, else ()
        found = components(wf)
        for i, component in enumerate(found):
            rank = len(found) - 1 - i
            if len(component) == 1:
                n = component[0]
                self._rank[n] = rank
                self._members[n] = (n,) if any(e.target == n for e in wf.out_edges(n)) else ()
                continue
            members = tuple(sorted(component))
            for n in members:
                self._rank[n] = rank
                self._members[n] = members
        self._terminal = {n for n, node in wf.nodes.items() if node.is_terminal}
        self._explore()
        self._count()

    def _explore(self) -> None:
        """Every reachable state, breadth first, with its steps (edge id, next state). Stepping into
        a node on a cycle raises its visit count (counts restart on entering a new component) and
        is refused past ``max_visits``; a node on no cycle carries no counts."""
        wf, rank, members_of = self.wf, self._rank, self._members
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
                        before = visits if rank[node] == rank[target] else (0,) * len(members)
                        i = members.index(target)
                        if before[i] >= limit:
                            continue
                        after = before[:i] + (before[i] + 1,) + before[i + 1 :]
                    else:
                        after = ()
                    state = (target, after)
                    t = index.get(state)
                    if t is None:
                        t = index[state] = len(self.states)
                        self.states.append(state)
                        self.out.append([])
                    row.append((e.id, t))
            s += 1
        # every step raises (component rank, visits in the component): sorting is a topological order
        self.order = sorted(range(len(self.states)), key=lambda s: (rank[self.states[s][0]], sum(self.states[s][1])))

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


def components(wf) -> list[list[str]]:
    """Strongly connected components of the workflow graph, each after every component it reaches
    (Tarjan's algorithm, iterative; reversed, the list is a topological order)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    for root in wf.nodes:
        if root in index:
            continue
        work = [(root, iter(wf.out_edges(root)))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for edge in edges:
                t = edge.target
                if t not in index:
                    index[t] = low[t] = len(index)
                    stack.append(t)
                    on_stack.add(t)
                    work.append((t, iter(wf.out_edges(t))))
                    break
                if t in on_stack and index[t] < low[node]:
                    low[node] = index[t]
            else:
                work.pop()
                if work and low[node] < low[work[-1][0]]:
                    low[work[-1][0]] = low[node]
                if low[node] == index[node]:
                    component = []
                    while True:
                        n = stack.pop()
                        on_stack.discard(n)
                        component.append(n)
                        if n == node:
                            break
                    found.append(component)
    return found


def count_paths(wf) -> int:
    """Exact number of paths, without enumerating them."""
    return StateGraph(wf).total


def iter_paths(wf) -> Iterator[Path]:
    """Every path, one at a time, depth first in file order of the edges."""
    return StateGraph(wf).walk()


def path_nodes(wf, path: Sequence[str]) -> tuple[str, ...]:
    """The start node, then the target of each edge of the path."""
    targets = {e.id: e.target for e in wf.edges}
    return (wf.start,) + tuple(targets[e] for e in path)


def edge_coverage(wf, paths) -> set[str]:
    """Edge ids that at least one of the paths takes."""
    return {e for p in paths for e in p}


@dataclass
class PathSelection:
    paths: list[Path]
    total: int
    sampled: bool


def select_paths(wf, cap: int = 5000, seed: int = 0) -> PathSelection:
    """All paths if there are at most ``cap``; else a deterministic sample covering every edge.

    The sample takes, for each edge in file order not yet covered, one path uniform among the paths
    through it, then fills up to ``cap`` with distinct paths drawn uniformly by rank.
    """
    space = StateGraph(wf)
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


def paths_table(wf, selection: PathSelection) -> pl.DataFrame:
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
