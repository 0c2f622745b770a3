"""The gallery: every workflow in it is valid, its natural sets load and speak every edge, and the
gallery table reads as a person reads it."""

from pathlib import Path

import polars as pl
import pytest

from subterra.gallery import gallery_table
from subterra.natural import edge_coverage, load_natural
from subterra.workflow import load_workflow

GALLERY = Path(__file__).parents[1] / "data" / "gallery"
WORKFLOWS = sorted((GALLERY / "workflows").glob("*.yaml"))


def test_the_gallery_holds_eight_workflows_of_its_own():
    assert len(WORKFLOWS) >= 8


@pytest.mark.parametrize("file", WORKFLOWS, ids=lambda f: f.stem)
def test_a_gallery_workflow_is_valid_and_its_people_speak_every_edge(file):
    wf = load_workflow(file)
    test = load_natural(GALLERY / "natural" / "test" / file.name, wf)
    validation = load_natural(GALLERY / "natural" / "validation" / file.name, wf)
    assert len(test.conversations) >= 30 and len(validation.conversations) >= 20
    coverage = edge_coverage(wf, test)
    assert not [e.id for e in wf.edges if coverage.get(e.id, 0) == 0]
    own = {line.casefold() for node in wf.nodes.values() for line in node.user}
    own |= {line.casefold() for e in wf.edges for line in e.user}
    spoken = [t.user.casefold() for c in test.conversations for t in c.turns]
    assert not [s for s in spoken if s in own]  # people's lines, not the workflow's


def test_the_gallery_table_shows_n_and_interval_per_set():
    scores = pl.DataFrame([
        {"route": "compiled_prefill", "set": "natural", "scenarios": 60, "strict_pass": 0.25,
         "strict_pass_low": 0.158, "strict_pass_high": 0.372},
        {"route": "compiled_prefill", "set": "holdout", "scenarios": 200, "strict_pass": 0.9,
         "strict_pass_low": 0.851, "strict_pass_high": 0.934},
    ])
    table = gallery_table([{"workflow": "coffee_order", "paths": 100, "minutes": 6.25, "scores": scores},
                           {"workflow": "broken", "paths": "?", "minutes": 0.1, "scores": None}])
    assert "| coffee_order | 100 | 0.25 (15/60; 0.16–0.37) | — | 0.90 (180/200; 0.85–0.93) | 6.2 min |" in table
    assert "| broken | ? | compile failed |" in table
