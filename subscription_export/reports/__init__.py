"""Reports computed from the exported change windows (plain functions, no Dagster)."""
