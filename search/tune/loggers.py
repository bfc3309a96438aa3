"""Ray Tune logger callbacks (--logger wandb|mlflow): every trial's results also go to W&B or MLflow.

The packages are optional and imported only when a search asks for one; a missing one is refused in one line
before Ray starts.
"""
from __future__ import annotations

import importlib.util
import os

from search.settings import SearchSettings, SettingsError

# --logger value -> (package to import, pip install name, what else to set up)
PACKAGES = {
    "wandb": ("wandb", "wandb", "then `wandb login`, or WANDB_MODE=offline"),
    "mlflow": ("mlflow", "mlflow", "runs go to $MLFLOW_TRACKING_URI, else ./mlruns"),
}


def check_logger(name: str) -> str:
    """Return name if its package is importable here ('' needs none); else raise SettingsError naming the fix."""
    if name and name not in PACKAGES:
        raise SettingsError(f"--logger {name}: not one of {', '.join(PACKAGES)}")
    if name and importlib.util.find_spec(PACKAGES[name][0]) is None:
        module, pip_name, setup = PACKAGES[name]
        raise SettingsError(f"--logger {name}: the {module} package is not installed; `pip install {pip_name}` "
                            f"({setup}), or leave --logger out")
    return name


def logger_callbacks(settings: SearchSettings) -> list:
    """The RunConfig callbacks for settings.logger: none, or Ray's W&B / MLflow logger for this search."""
    if not settings.logger:
        return []
    check_logger(settings.logger)
    if settings.logger == "wandb":
        from ray.air.integrations.wandb import WandbLoggerCallback

        # One W&B group per search; the project comes from $WANDB_PROJECT, else the search's name.
        return [WandbLoggerCallback(project=os.environ.get("WANDB_PROJECT") or settings.name, group=settings.name)]
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    return [MLflowLoggerCallback(experiment_name=settings.name, tags={"search": settings.name})]

