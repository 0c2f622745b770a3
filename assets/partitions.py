"""One dynamic partition per workflow; the key is the workflow id (the YAML file's stem)."""

import dagster as dg

workflows_partitions = dg.DynamicPartitionsDefinition(name="workflows")
