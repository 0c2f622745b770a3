"""Jobs: ``compile_workflow`` materializes the compile pipeline for one workflow partition;
``ladder_workflow`` the compile plus the repair loop and the ladder."""

import dagster as dg

from subterra_dagster.assets import COMPILE_ASSETS, LADDER_ASSETS

compile_workflow = dg.define_asset_job(
    "compile_workflow",
    selection=dg.AssetSelection.assets(*COMPILE_ASSETS),
    description="Compile one workflow into small-model weights: graph, paths, corpus, gate, training, eval, cost.",
    tags={"dagster/max_runtime": str(4 * 3600)},
)

ladder_workflow = dg.define_asset_job(
    "ladder_workflow",
    selection=dg.AssetSelection.assets(*LADDER_ASSETS),
    description="Compile, evaluate every route, repair, promote, and build the ladder table.",
    tags={"dagster/max_runtime": str(8 * 3600)},
)
