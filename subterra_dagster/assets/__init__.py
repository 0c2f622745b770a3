"""The compile pipeline, one asset per stage, one dynamic partition per workflow; then the repair
loop and the ladder (every route side by side)."""

from subterra_dagster.assets.cost_report import cost_report
from subterra_dagster.assets.eval_scores import eval_scores
from subterra_dagster.assets.ladder import ladder
from subterra_dagster.assets.partitions import workflows_partitions
from subterra_dagster.assets.promoted_model import promoted_model
from subterra_dagster.assets.repair_map import repair_map
from subterra_dagster.assets.serving_model import serving_model
from subterra_dagster.assets.synthetic_corpus import synthetic_corpus
from subterra_dagster.assets.trained_weights import trained_weights
from subterra_dagster.assets.validated_dataset import validated_dataset
from subterra_dagster.assets.workflow_graph import workflow_graph
from subterra_dagster.assets.workflow_paths import workflow_paths

COMPILE_ASSETS = [
    workflow_graph,
    workflow_paths,
    synthetic_corpus,
    validated_dataset,
    trained_weights,
    eval_scores,
    cost_report,
    serving_model,
]
REPAIR_ASSETS = [repair_map, promoted_model, ladder]
LADDER_ASSETS = COMPILE_ASSETS + REPAIR_ASSETS

__all__ = ["COMPILE_ASSETS", "LADDER_ASSETS", "REPAIR_ASSETS", "workflows_partitions"]
