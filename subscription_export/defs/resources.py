"""Settings as a Dagster resource, so runs, sensors and the UI share one configuration."""

from pathlib import Path

import dagster as dg

from subscription_export.core.settings import Settings
from subscription_export.runtime import Project

_projects: dict[Settings, Project] = {}


class ExportSettings(dg.ConfigurableResource):
    """Where the source, state and files live (defaults come from SUBSCRIPTION_EXPORT_* env)."""

    source_url: str
    state_url: str
    export_dir: str
    watermark_url: str | None = None
    window_max_changes: int = 100_000
    window_max_age_s: float = 60.0
    read_batch_size: int = 10_000
    lease_wait_s: float = 300.0
    schema_contract: str = "evolve"
    csv_neutralize_formulas: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> "ExportSettings":
        return cls(
            source_url=settings.source_url,
            state_url=settings.state_url,
            export_dir=str(settings.export_dir),
            watermark_url=settings.watermark_url,
            window_max_changes=settings.window_max_changes,
            window_max_age_s=settings.window_max_age_s,
            read_batch_size=settings.read_batch_size,
            lease_wait_s=settings.lease_wait_s,
            schema_contract=settings.schema_contract,
            csv_neutralize_formulas=settings.csv_neutralize_formulas,
        )

    def settings(self) -> Settings:
        return Settings(
            source_url=self.source_url,
            state_url=self.state_url,
            export_dir=Path(self.export_dir),
            watermark_url=self.watermark_url,
            window_max_changes=self.window_max_changes,
            window_max_age_s=self.window_max_age_s,
            read_batch_size=self.read_batch_size,
            lease_wait_s=self.lease_wait_s,
            schema_contract=self.schema_contract,
            csv_neutralize_formulas=self.csv_neutralize_formulas,
        )

    def project(self) -> Project:
        """One Project (and its connection pools) per settings per process."""
        settings = self.settings()
        if settings not in _projects:
            _projects[settings] = Project(settings)
        return _projects[settings]
