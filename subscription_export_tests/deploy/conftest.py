"""Fixtures shared with the production-instance tests of `defs/`."""

from subscription_export_tests.defs.test_pg_instance import dagster_db as dagster_db
