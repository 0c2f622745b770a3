"""Paths through a workflow: counted exactly, enumerated lazily, sampled with every edge covered.

A path is the sequence of edges from the start node to a terminal node, passing through no node
more than ``max_visits`` times. Counting is a memoised recursion over (node, visit counts of the
nodes that lie on a cycle): nodes on no cycle can never be revisited, so acyclic parts collapse
to a DP on the node and a layered graph with 10^12 paths counts instantly. Enumeration is a
depth-first walk that yields one path at a time (flat memory). Past a cap, a deterministic sample
first takes one path through every edge, then uniform random paths drawn with the counts.
"""

from __future__ import annotations

import hashlib
import random
import sys
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator, Sequence

import polars as pl

Path = tuple[str, ...]


def path_id(path: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(path).encode()).hexdigest()[:12]


def _cyclic_nodes(wf) -> set[str]:
    import networkx as nx

    graph = nx.DiGraph()
    graph.add_nodes_from(wf.nodes)
    graph.add_edges_from((e.source, e.target) for e in wf.edges)
    out = set()
    for component in nx.strongly_connected_components(graph):
        if len(component) > 1:
            out |= component
    out |= {e.source for e in wf.edges if e.source == e.target}
    return out


class _Counter:
    """count(node, visits) = number of path completions from ``node`` in visit state ``visits``."""

    def __init__(self, wf):
        self.wf = wf
        self.cyclic = sorted(_cyclic_nodes(wf))
        self.index = {n: i for i, n in enumerate(self.cyclic)}
        self.count = lru_cache(maxsize=None)(self._count)

    def start_state(self) -> tuple[int, ...]:
        visits = [0] * len(self.cyclic)
        if self.wf.start in self.index:
            visits[self.index[self.wf.start]] = 1
        return tuple(visits)

    def step(self, visits: tuple[int, ...], target: str) -> tuple[int, ...] | None:
        """Visit state after arriving at ``target``, or None if that would exceed max_visits."""
        i = self.index.get(target)
        if i is None:
            return visits
        if visits[i] >= self.wf.max_visits:
            return None
        v = list(visits)
        v[i] += 1
        return tuple(v)

    def _count(self, node: str, visits: tuple[int, ...]) -> int:
        if self.wf.nodes[node].is_terminal:
            return 1
        total = 0
        for e in self.wf.out_edges(node):
            nxt = self.step(visits, e.target)
            if nxt is not None:
                total += self.count(e.target, nxt)
        return total


def _deep(fn, *args):
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20_000))
    try:
        return fn(*args)
    finally:
        sys.setrecursionlimit(limit)


def count_paths(wf) -> int:
    """Exact number of paths, without enumerating them."""
    counter = _Counter(wf)
    return _deep(counter.count, wf.start, counter.start_state())


def iter_paths(wf) -> Iterator[Path]:
    """Every path, one at a time, depth first, in file order of the edges."""
    counter = _Counter(wf)
    stack: list[tuple[str, tuple[int, ...], int]] = [(wf.start, counter.start_state(), 0)]
    edges: list[str] = []
    while stack:
        node, visits, i = stack[-1]
        if wf.nodes[node].is_terminal:
            yield tuple(edges)
            stack.pop()
            if edges:
                edges.pop()
            continue
        out = wf.out_edges(node)
        while i < len(out) and counter.step(visits, out[i].target) is None:
            i += 1
        if i >= len(out):
            stack.pop()
            if edges:
                edges.pop()
            continue
        stack[-1] = (node, visits, i + 1)
        e = out[i]
        edges.append(e.id)
        stack.append((e.target, counter.step(visits, e.target), 0))


def path_nodes(wf, path: Sequence[str]) -> tuple[str, ...]:
    targets = {e.id: e.target for e in wf.edges}
    return (wf.start,) + tuple(targets[e] for e in path)


def edge_coverage(wf, paths) -> set[str]:
    return {e for p in paths for e in p}


@dataclass
class PathSelection:
    paths: list[Path]
    total: int
    sampled: bool


def _complete(wf, counter: _Counter, node: str, visits, rng: random.Random, prefix: list[str]) -> Path | None:
    """Extend ``prefix`` (ending at ``node``) to a terminal, uniformly among completions."""
    path = list(prefix)
    while not wf.nodes[node].is_terminal:
        options = []
        for e in wf.out_edges(node):
            nxt = counter.step(visits, e.target)
            if nxt is not None:
                weight = _deep(counter.count, e.target, nxt)
                if weight:
                    options.append((e, nxt, weight))
        if not options:
            return None
        pick = rng.randrange(sum(w for _, _, w in options))
        for e, nxt, w in options:
            if pick < w:
                break
            pick -= w
        path.append(e.id)
        node, visits = e.target, nxt
    return tuple(path)


def _through(wf, counter: _Counter, edge, rng: random.Random) -> Path | None:
    """A path through ``edge``: a shortest prefix to its source, then a uniform completion."""
    parents: dict[str, tuple[str, str] | None] = {wf.start: None}
    queue = deque([wf.start])
    while queue and edge.source not in parents:
        node = queue.popleft()
        for e in wf.out_edges(node):
            if e.target not in parents:
                parents[e.target] = (node, e.id)
                queue.append(e.target)
    if edge.source not in parents:
        return None
    prefix, node = [], edge.source
    while parents[node] is not None:
        prev, eid = parents[node]
        prefix.append(eid)
        node = prev
    prefix.reverse()
    visits = counter.start_state()
    targets = {e.id: e.target for e in wf.edges}
    for eid in prefix + [edge.id]:
        visits = counter.step(visits, targets[eid])
        if visits is None:
            return None
    return _complete(wf, counter, edge.target, visits, rng, prefix + [edge.id])


def select_paths(wf, cap: int = 5000, seed: int = 0) -> PathSelection:
    """All paths if there are at most ``cap``; else a deterministic sample covering every edge."""
    total = count_paths(wf)
    if total <= cap:
        return PathSelection(list(iter_paths(wf)), total, False)
    rng = random.Random(seed)
    counter = _Counter(wf)
    chosen: dict[Path, None] = {}
    for edge in wf.edges:
        if len(chosen) >= cap:
            break
        if edge.id in edge_coverage(wf, chosen):
            continue
        path = _through(wf, counter, edge, rng)
        if path is not None:
            chosen[path] = None
    attempts = 0
    while len(chosen) < cap and attempts < cap * 20:
        attempts += 1
        path = _complete(wf, counter, wf.start, counter.start_state(), rng, [])
        if path is not None:
            chosen[path] = None
    return PathSelection(list(chosen), total, True)


def paths_table(wf, selection: PathSelection) -> pl.DataFrame:
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
    schema = {"workflow": pl.String, "path_id": pl.String, "edges": pl.List(pl.String), "nodes": pl.List(pl.String),
              "n_edges": pl.Int64, "terminal": pl.String, "outcome": pl.String}
    return pl.DataFrame(rows, schema=schema)


def paths_from_table(df: pl.DataFrame) -> list[Path]:
    return [tuple(edges) for edges in df["edges"].to_list()]
