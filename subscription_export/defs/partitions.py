"""CDC windows as dynamic partitions, keyed by `state.windows.window_key` (never changed)."""

import dagster as dg

cdc_windows = dg.DynamicPartitionsDefinition(name="cdc_windows")
