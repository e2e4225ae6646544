"""CDC windows as dynamic partitions: `{from:020d}-{to:020d}`, inclusive, never changed."""

import dagster as dg

cdc_windows = dg.DynamicPartitionsDefinition(name="cdc_windows")
