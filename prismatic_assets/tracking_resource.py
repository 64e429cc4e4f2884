"""The MLflow tracker as a Dagster resource: SQLite under the data directory by default."""

from pathlib import Path

import dagster as dg

from prismatic_assets.core.tracking import Tracker, default_tracking_uri


class TrackerResource(dg.ConfigurableResource):
    """MLflow tracking. `tracking_uri`: None for $MLFLOW_TRACKING_URI, else sqlite:///<data_dir>/mlflow.db."""

    data_dir: str
    tracking_uri: str | None = None
    experiment: str = "prismatic"

    def uri(self) -> str:
        return self.tracking_uri or default_tracking_uri(Path(self.data_dir))

    def tracker(self) -> Tracker:
        return Tracker(self.uri(), experiment=self.experiment)
