"""One dynamic partition per workflow; the key is the workflow id (the YAML file's stem)."""

import dagster as dg

workflows_partitions = dg.DynamicPartitionsDefinition(name="workflows")

# The run tag carrying the content hash a run was started for (by the sensor): `workflow_graph`
# refuses a file that has changed since.
CONTENT_HASH_TAG = "subterra/content_hash"
