"""Jobs: ``compile_workflow`` materializes the whole pipeline for one workflow partition."""

import dagster as dg

from assets import COMPILE_ASSETS

compile_workflow = dg.define_asset_job(
    "compile_workflow",
    selection=dg.AssetSelection.assets(*COMPILE_ASSETS),
    description="Compile one workflow into small-model weights: graph, paths, corpus, gate, training, eval, cost.",
    tags={"dagster/max_runtime": str(4 * 3600)},
)
