"""Path counting against brute force, streaming enumeration, and edge-covering sampling."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from subterra.paths import (
    MAX_STATES,
    PathSelection,
    PathSpaceTooLarge,
    StateGraph,
    count_paths,
    edge_coverage,
    iter_paths,
    path_id,
    path_nodes,
    paths_from_table,
    paths_table,
    select_paths,
)
from subterra.workflow import Workflow, load_workflow

FIXTURES = Path(__file__).parent / "fixtures"


def graph(edges: dict[str, list[str]], max_visits: int = 1, start: str = "a") -> Workflow:
    """A workflow from adjacency lists; a node with no successors is a terminal, two or more are branches."""
    nodes = {}
    for name in dict.fromkeys([start, *edges, *(t for ts in edges.values() for t in ts)]):
        targets = edges.get(name, [])
        node = {"prompt": f"Step {name}."}
        if not targets:
            node["end"] = "success"
        elif len(targets) == 1:
            node["next"] = targets[0]
        else:
            node["branches"] = [{"to": t, "when": f"to {t}"} for t in targets]
        nodes[name] = node
    return Workflow.from_dict({"workflow": "g", "assistant": "A test.", "start": start, "max_visits": max_visits, "nodes": nodes})


def brute_force(wf: Workflow) -> list[tuple[str, ...]]:
    """Every path by plain recursion over the edges, counting visits of every node."""
    found = []

    def walk(node: str, visits: dict[str, int], edges: list[str]) -> None:
        if wf.nodes[node].is_terminal:
            found.append(tuple(edges))
            return
        for e in wf.out_edges(node):
            if visits.get(e.target, 0) < wf.max_visits:
                walk(e.target, {**visits, e.target: visits.get(e.target, 0) + 1}, edges + [e.id])

    walk(wf.start, {wf.start: 1}, [])
    return found


SMALL = {
    "chain": ({"a": ["b"], "b": ["c"]}, 1),
    "diamond": ({"a": ["b", "c"], "b": ["d"], "c": ["d"], "d": ["e", "f"]}, 1),
    "two branches into one node": ({"a": ["b", "b"], "b": ["c"]}, 1),
    "self loop": ({"a": ["a", "z"]}, 2),
    "retry loop, one visit": ({"a": ["b"], "b": ["c", "a", "x"], "c": ["b", "z"]}, 1),
    "retry loop, two visits": ({"a": ["b"], "b": ["c", "a", "x"], "c": ["b", "z"]}, 2),
    "retry loop, three visits": ({"a": ["b"], "b": ["c", "a", "x"], "c": ["b", "z"]}, 3),
    "two loops in sequence": ({"a": ["b", "a"], "b": ["c"], "c": ["d", "b", "c"], "d": ["z", "d"]}, 2),
    "loop with a dead end": ({"a": ["b"], "b": ["a", "c"], "c": ["b"], "x": ["z"]}, 2),
}


@pytest.mark.parametrize("case", SMALL)
def test_count_and_enumeration_match_brute_force(case):
    edges, max_visits = SMALL[case]
    wf = graph(edges, max_visits)
    expected = brute_force(wf)
    assert count_paths(wf) == len(expected)
    assert list(iter_paths(wf)) == expected  # the same depth-first file order, no duplicates, no dead ends
    space = StateGraph(wf)
    assert [space.unrank(i) for i in range(space.total)] == expected


def test_loop_with_a_dead_end_has_no_paths():
    wf = graph(SMALL["loop with a dead end"][0], 2)
    assert count_paths(wf) == 0 and list(iter_paths(wf)) == []


def test_two_branches_into_one_node_are_two_paths():
    wf = graph({"a": ["b", "b"], "b": ["c"]})
    assert list(iter_paths(wf)) == [("a>b#0", "b>c"), ("a>b#1", "b>c")]
    assert path_nodes(wf, ("a>b#1", "b>c")) == ("a", "b", "c")


def layered(layers: int, width: int) -> Workflow:
    """Every node of a layer branches to every node of the next: width ** layers paths."""
    edges = {"a": [f"n0_{j}" for j in range(width)]}
    for i in range(layers - 1):
        for j in range(width):
            edges[f"n{i}_{j}"] = [f"n{i + 1}_{k}" for k in range(width)]
    for j in range(width):
        edges[f"n{layers - 1}_{j}"] = ["z"]
    return graph(edges)


def test_a_layered_graph_with_10_to_the_12_paths_counts_instantly():
    wf = layered(12, 10)
    started = time.perf_counter()
    assert count_paths(wf) == 10**12
    assert time.perf_counter() - started < 1.0
    first = next(iter_paths(wf))  # streaming: the first path comes without listing the rest
    assert len(first) == 13


def test_a_long_chain_needs_no_recursion():
    wf = graph({f"s{i}": [f"s{i + 1}"] for i in range(5_000)}, start="s0")
    assert count_paths(wf) == 1 and len(next(iter_paths(wf))) == 5_000


def big_loop(n: int, max_visits: int) -> Workflow:
    """A loop of ``n`` nodes, each going one or two steps on or leaving: few bytes, many states."""
    names = [f"n{i}" for i in range(n)]
    edges = {"a": [names[0]]} | {x: [names[(i + 1) % n], names[(i + 2) % n], "z"] for i, x in enumerate(names)}
    return graph(edges, max_visits)


def test_a_loop_whose_states_explode_is_refused_quickly_with_the_numbers():
    wf = big_loop(12, 3)  # ~1.8 million states: 40 s and a gigabyte to explore before the limit, 10^15 at 20 nodes
    started = time.process_time()
    for explore in (count_paths, lambda w: select_paths(w, cap=10), lambda w: next(iter_paths(w))):
        with pytest.raises(PathSpaceTooLarge) as refused:
            explore(wf)
        assert f"more than {MAX_STATES:,} (node, visit count) states with max_visits=3" in str(refused.value)
        assert "its largest loop has 12 nodes" in str(refused.value)
    assert time.process_time() - started < 20.0
    assert count_paths(big_loop(6, 3)) == len(brute_force(big_loop(6, 3))) == 31_434  # smaller loops still count exactly
    with pytest.raises(PathSpaceTooLarge, match="largest loop has 6 nodes"):
        count_paths(big_loop(6, 3), max_states=100)
    with pytest.raises(PathSpaceTooLarge, match="it has 37 nodes and no loop; raise max_states"):
        count_paths(layered(5, 7), max_states=20)


def test_all_paths_when_under_the_cap():
    wf = load_workflow(FIXTURES / "mini_booking.yaml")
    selection = select_paths(wf, cap=100)
    assert selection == PathSelection(list(iter_paths(wf)), count_paths(wf), False)
    assert edge_coverage(wf, selection.paths) == {e.id for e in wf.edges}


@pytest.mark.parametrize("wf", [layered(6, 4), graph(SMALL["two loops in sequence"][0], 3)], ids=["layered", "loops"])
def test_a_sample_covers_every_edge_and_is_deterministic(wf):
    total = count_paths(wf)
    cap = 40
    assert total > cap
    selection = select_paths(wf, cap=cap, seed=7)
    assert selection.sampled and selection.total == total
    assert len(selection.paths) == cap == len(set(selection.paths))
    assert edge_coverage(wf, selection.paths) == {e.id for e in wf.edges}
    valid = set(iter_paths(wf))
    assert set(selection.paths) <= valid
    assert select_paths(wf, cap=cap, seed=7) == selection
    assert select_paths(wf, cap=cap, seed=8) != selection


def test_a_cap_just_under_the_total_still_gives_distinct_paths():
    wf = layered(3, 3)  # 27 paths
    selection = select_paths(wf, cap=26, seed=0)
    assert selection.sampled and len(set(selection.paths)) == 26


def test_sampling_a_huge_graph_is_fast_and_uniform_enough():
    wf = layered(12, 10)
    started = time.perf_counter()
    selection = select_paths(wf, cap=2000, seed=0)
    assert time.perf_counter() - started < 5.0
    assert len(set(selection.paths)) == 2000 and edge_coverage(wf, selection.paths) == {e.id for e in wf.edges}
    # uniform draws: the first branch is taken by about a tenth of the paths
    first_choice = [p[0] for p in selection.paths].count("a>n0_0#0")
    assert 120 < first_choice < 290


def test_uniform_among_paths_through_an_edge():
    # through c>d the prefix is a>b>c (2 ways: a>b#0/#1) and the suffix d>e|d>f: four equally likely paths
    import random

    wf = graph({"a": ["b", "b", "x"], "b": ["c"], "c": ["d"], "d": ["e", "f"], "x": ["z"]})
    space = StateGraph(wf)
    rng = random.Random(0)
    seen = [space.through("c>d", rng) for _ in range(400)]
    counts = {p: seen.count(p) for p in set(seen)}
    assert len(counts) == 4 and all(60 < n < 140 for n in counts.values())


def test_paths_table_round_trips(tmp_path):
    wf = load_workflow(FIXTURES / "mini_booking.yaml")
    selection = select_paths(wf)
    table = paths_table(wf, selection)
    assert table.columns == ["workflow", "path_id", "edges", "nodes", "n_edges", "terminal", "outcome"]
    assert paths_from_table(table) == selection.paths
    row = table.row(0, named=True)
    assert row["path_id"] == path_id(selection.paths[0]) and len(row["path_id"]) == 12
    assert row["nodes"][0] == wf.start and row["outcome"] == wf.nodes[row["terminal"]].end
    assert table["path_id"].n_unique() == table.height
    assert set(table["outcome"]) == {"success", "abandoned", "escalated"}
    table.write_parquet(tmp_path / "paths.parquet")
    assert paths_table(wf, PathSelection([], 0, False)).height == 0
