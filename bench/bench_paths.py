"""Path counting and enumeration against networkx ``all_simple_paths`` (what a user would write).

Counting is two dynamic programmes over the state graph: it never enumerates. Enumeration is a
depth-first walk that yields one path at a time, so its peak memory stays flat however many paths
there are; networkx's generator streams too, but a user who wants the count materialises or at
least walks every path. Peak memory is measured with tracemalloc in a separate pass (it slows
the code it watches), timings without it.
"""

from __future__ import annotations

import time
import tracemalloc

import networkx as nx

from bench.common import WORKFLOWS, header, ratio_line
from subterra.paths import StateGraph, count_paths, iter_paths
from subterra.workflow import Workflow, load_workflow


def layered(width: int, layers: int) -> Workflow:
    """start -> ``layers`` layers of ``width`` nodes, each joined to every node of the next -> end:
    width ** layers paths."""
    names = [[f"n{l}_{i}" for i in range(width)] for l in range(layers)]
    nodes = {"start": {"prompt": "Start.", "branches": [{"to": n, "when": f"to {n}"} for n in names[0]]}}
    for l, row in enumerate(names):
        for n in row:
            targets = names[l + 1] if l + 1 < layers else ["end"]
            nodes[n] = ({"prompt": f"Step {n}.", "next": "end"} if len(targets) == 1
                        else {"prompt": f"Step {n}.", "branches": [{"to": t, "when": f"to {t}"} for t in targets]})
    nodes["end"] = {"prompt": "End.", "end": "success"}
    return Workflow.from_dict({"workflow": "layered", "assistant": "A test.", "start": "start", "nodes": nodes})


def nx_graph(wf: Workflow):
    """The workflow as networkx sees it: one edge per branch (a multigraph, so two branches
    between the same nodes are two paths, as in the workflow)."""
    graph = nx.MultiDiGraph()
    graph.add_edges_from((e.source, e.target) for e in wf.edges)
    terminals = [n for n, node in wf.nodes.items() if node.is_terminal]
    return graph, terminals


def nx_unrolled(wf: Workflow):
    """What a networkx user writes when nodes may be visited up to ``max_visits`` times: the
    graph unrolled over (node, visit counts), whose simple paths are exactly the workflow's paths."""
    states = StateGraph(wf)
    graph = nx.MultiDiGraph()
    graph.add_nodes_from(range(len(states.states)))
    graph.add_edges_from((s, t) for s, row in enumerate(states.out) for _, t in row)
    terminals = [s for s, (node, _) in enumerate(states.states) if wf.nodes[node].is_terminal]
    return graph, terminals


def peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def drain(iterator) -> int:
    n = 0
    for _ in iterator:
        n += 1
    return n


def best(fn, repeats: int, number: int = 1) -> float:
    """The fastest of ``repeats`` timings of ``number`` calls, per call (the least disturbed by a
    loaded machine)."""
    import timeit

    return min(timeit.repeat(fn, number=number, repeat=repeats)) / number


def bench(name: str, wf: Workflow, repeats: int) -> dict:
    print(f"\n-- {name}: {len(wf.nodes)} nodes, {len(wf.edges)} edges, max_visits {wf.max_visits}")
    graph, terminals = nx_graph(wf)
    nx_count = drain(nx.all_simple_paths(graph, wf.start, terminals))
    nx_seconds = best(lambda: drain(nx.all_simple_paths(graph, wf.start, terminals)), repeats)
    ours = count_paths(wf)
    count_seconds = best(lambda: count_paths(wf), 7, number=50)
    print(f"paths: subterra {ours:,} (node visits up to max_visits); networkx all_simple_paths {nx_count:,}"
          f" (simple paths only); timings are the best of several runs")
    states = StateGraph(wf)
    print(f"state graph: {len(states.states):,} states (counting never enumerates: its work grows with these, not with paths)")
    speedup = ratio_line("count", "count_paths", count_seconds, "networkx enumeration", nx_seconds, "s", higher_is_better=False)
    if wf.max_visits > 1:  # all_simple_paths misses every path that loops: enumerate the right ones with networkx too
        unrolled, ends = nx_unrolled(wf)
        right = drain(nx.all_simple_paths(unrolled, 0, ends))
        unrolled_seconds = best(lambda: drain(nx.all_simple_paths(unrolled, 0, ends)), repeats)
        print(f"networkx all_simple_paths over the graph unrolled to max_visits={wf.max_visits}: {right:,} paths "
              f"({'the same count' if right == ours else 'A DIFFERENT COUNT'}; unrolling not timed)")
        speedup = ratio_line("count (same answer)", "count_paths", count_seconds, "networkx enumeration, unrolled", unrolled_seconds,
                             "s", higher_is_better=False)
    walked = drain(iter_paths(wf))
    walk_seconds = best(lambda: drain(iter_paths(wf)), repeats)
    ratio_line("enumerate", "iter_paths", walk_seconds, "networkx all_simple_paths", nx_seconds, "s", higher_is_better=False)
    print(f"enumeration rate: iter_paths {walked / walk_seconds:,.0f} paths/s, networkx {nx_count / nx_seconds:,.0f} paths/s")
    stream_peak = peak_bytes(lambda: drain(iter_paths(wf)))
    listed_peak = peak_bytes(lambda: len(list(nx.all_simple_paths(graph, wf.start, terminals))))
    ratio_line("peak memory", "iter_paths streaming", stream_peak / 2**20, "list(all_simple_paths)", listed_peak / 2**20,
               "MiB", higher_is_better=False)
    return {"count_speedup": speedup, "paths": ours, "stream_peak": stream_peak}


def main() -> None:
    header("paths: counting and enumeration vs networkx all_simple_paths")
    bench("insurance_claims", load_workflow(WORKFLOWS / "insurance_claims.yaml"), repeats=7)
    results = [bench(f"generated layered graph {w}^{l}", layered(w, l), repeats=r) for w, l, r in ((4, 8, 3), (4, 10, 1))]
    growth = results[1]["stream_peak"] / results[0]["stream_peak"]
    print(f"\nflat memory: 16x the paths ({results[0]['paths']:,} -> {results[1]['paths']:,}), "
          f"streaming peak x{growth:.2f}")


if __name__ == "__main__":
    main()
