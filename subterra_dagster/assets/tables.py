"""Which asset writes each DuckDB table: an asset declares the tables it reads, and its Dagster
``deps`` are the assets that write them, so the lineage the UI draws is the lineage the code has
(``tests/test_assets.py`` checks every ``read("TABLE")`` of an asset module against its ``READS``)."""

import dagster as dg

WRITTEN_BY = {
    "workflow_nodes": "workflow_graph",
    "workflow_edges": "workflow_graph",
    "workflow_definitions": "workflow_graph",
    "workflow_paths": "workflow_paths",
    "synthetic_corpus": "synthetic_corpus",
    "validated_dataset": "validated_dataset",
    "rejected_conversations": "validated_dataset",
    "corpus_checks": "validated_dataset",
    "trained_weights": "trained_weights",
    "eval_scenarios": "eval_scores",
    "eval_scores": "eval_scores",
    "eval_runs": "eval_scores",
    "good_models": "eval_scores",
    "cost_report": "cost_report",
    "repair_map": "repair_map",
    "promotions": "promoted_model",
    "repair_changes": "promoted_model",
    "repair_scores": "promoted_model",
    "ladder": "ladder",
    "serving_models": "serving_model",
}


def upstream(asset: str, reads: tuple[str, ...], after: tuple[str, ...] = ()) -> list[dg.AssetKey]:
    """The keys of the assets that write the tables ``asset`` reads (its own earlier rows, as a
    recompile reads its previous corpus, are not a dependency), plus ``after``: assets it must
    follow although it reads their results through the core (``subterra.serving``)."""
    keys = dict.fromkeys(WRITTEN_BY[t] for t in reads if WRITTEN_BY[t] != asset)
    keys.update(dict.fromkeys(after))
    return [dg.AssetKey(k) for k in keys]
