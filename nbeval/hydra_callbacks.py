"""Hydra callback: one MLflow parent run per multirun, so each job's run nests under its sweep.

The parent is created in the launching process before any job starts (jobs may be separate processes
on other machines) and its id is left in the sweep folder for the jobs to read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from omegaconf import DictConfig

from nbeval.tracking import PARENT_RUN_FILE


class MLflowMultirunParent(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not config.get("tracking"):
            return
        sweep = Path(config.hydra.sweep.dir)
        sweep.mkdir(parents=True, exist_ok=True)
        tracker = instantiate(config.tracking)
        overrides = " ".join(config.hydra.overrides.task)
        run_id = tracker.start_parent(f"multirun {sweep.name}", {"nbeval.sweep_dir": str(sweep.resolve()), "nbeval.overrides": overrides[:5000]})
        (sweep / PARENT_RUN_FILE).write_text(run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        path = Path(config.hydra.sweep.dir) / PARENT_RUN_FILE
        if config.get("tracking") and path.exists():
            instantiate(config.tracking).end_parent(path.read_text().strip())
