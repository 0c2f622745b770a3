"""The training set is sized from the workflow: every edge and every enum value gets a floor of
examples, on a 5-path workflow and on a 3,000-path one."""

from collections import Counter

from subterra.corpus import CorpusConfig
from subterra.paths import select_paths
from subterra.sizing import train_counts
from subterra.workflow import Workflow


def chain_workflow(decisions: int) -> Workflow:
    """A chain of yes/no steps, each branch rejoining the next step, and a way out to a person at
    the first: 2**decisions + 1 paths; one enum slot of four values collected on one branch of the
    first step."""
    nodes = {}
    for i in range(decisions):
        nxt = f"q{i + 1}" if i + 1 < decisions else "done"
        branches = [{"to": nxt, "when": "yes", "user": ["yes"]}, {"to": nxt, "when": "no", "user": ["no"]}]
        if i == 0:
            branches[0]["collect"] = ["colour"]
            branches[0]["user"] = ["{colour}"]
            branches.append({"to": "human", "when": "wants a person", "user": ["a person please"]})
        nodes[f"q{i}"] = {"prompt": "ask", "say": [f"Question {i}?"], "branches": branches}
    nodes["done"] = {"prompt": "end", "say": ["Done."], "end": "success"}
    nodes["human"] = {"prompt": "hand over", "say": ["A colleague will help."], "end": "escalated"}
    return Workflow.from_dict({
        "workflow": f"chain{decisions}", "assistant": "A.", "start": "q0",
        "slots": {"colour": {"type": "enum", "values": ["red", "green", "blue", "grey"]}}, "nodes": nodes,
    })


def through(wf, paths, counts) -> Counter:
    seen: Counter = Counter()
    for path, n in zip(paths, counts):
        for edge in set(path):
            seen[edge] += n
    return seen


def test_a_small_workflow_gets_its_floor_on_every_edge_and_enum_value():
    wf = chain_workflow(2)
    paths = select_paths(wf, cap=5000).paths
    assert len(paths) == 5
    config = CorpusConfig(conversations_per_path=8, max_train_conversations=800, sizing="workflow",
                          min_train_conversations=300, edge_floor=24, value_floor=12)
    counts = train_counts(wf, paths, config)
    assert sum(counts) >= 300 and min(counts) >= 8  # a small workflow is not left at 5 x 8
    seen = through(wf, paths, counts)
    assert all(seen[e.id] >= 24 for e in wf.edges)
    colour = sum(n for path, n in zip(paths, counts) if "q0>q1#0" in path)
    assert colour >= 12 * 4  # four declared colours, at least 12 conversations each on the average
    assert train_counts(wf, paths, CorpusConfig(conversations_per_path=8, sizing="uniform")) == [8] * 5


def test_a_3000_path_workflow_stays_in_budget_and_covers_every_edge():
    wf = chain_workflow(12)
    paths = select_paths(wf, cap=3000, seed=0).paths
    assert len(paths) == 3000
    config = CorpusConfig(conversations_per_path=8, max_train_conversations=800, sizing="workflow",
                          min_train_conversations=600, edge_floor=24, value_floor=12)
    counts = train_counts(wf, paths, config)
    assert sum(counts) <= 800  # the budget holds (uniform would give 3,000: one per path)
    seen = through(wf, paths, counts)
    assert all(seen[e.id] >= 24 for e in wf.edges)
    colour = sum(n for path, n in zip(paths, counts) if "q0>q1#0" in path)
    assert colour >= 12 * 4
    assert sum(train_counts(wf, paths, CorpusConfig(conversations_per_path=8, max_train_conversations=800, sizing="uniform"))) == 3000


def test_held_out_sets_scale_with_the_paths_within_a_floor_and_a_cap():
    from subterra.corpus import build_corpus, planned_sizes
    from subterra.sizing import HELDOUT_CAP, HELDOUT_FLOOR, heldout_size
    from subterra.teacher import TemplateTeacher

    assert heldout_size(4) == HELDOUT_FLOOR == 100  # a small workflow: the floor keeps the interval useful
    assert heldout_size(86) == 172  # two plays per path
    assert heldout_size(3000) == HELDOUT_CAP == 200
    wf = chain_workflow(2)
    paths = select_paths(wf).paths
    config = CorpusConfig(conversations_per_path=1, sizing="uniform")
    sizes = planned_sizes(wf, paths, config)
    assert sizes["holdout"] == sizes["test_unseen"] == sizes["validation"] == 100
    corpus = build_corpus(wf, paths, TemplateTeacher(), config)
    assert corpus["split"].value_counts().sort("split").rows() == [("holdout", 100), ("test_unseen", 100), ("train", len(paths)), ("validation", 100)]
    pinned = planned_sizes(wf, paths, CorpusConfig(holdout_scenarios=7, validation_scenarios=3, sizing="uniform"))
    assert (pinned["holdout"], pinned["validation"]) == (7, 3)
