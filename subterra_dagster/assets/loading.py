"""Reading a stage's inputs: the partition's rows of upstream tables, and the workflow snapshot."""

import json


def snapshot(store, workflow: str):
    """The workflow as ``workflow_graph`` stored it for this partition."""
    from subterra.workflow import Workflow

    row = store.read("workflow_definitions", workflow).row(0, named=True)
    return Workflow.from_dict(json.loads(row["definition"]))

