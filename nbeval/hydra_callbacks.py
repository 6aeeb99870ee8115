"""Hydra callback: one MLflow parent run per multirun, so each job's run nests under its sweep.

The parent is created in the launching process before any job starts (jobs may be separate processes
on other machines) and its id is left in the sweep folder for the jobs to read. A tracking store that
is down never stops the sweep: the sweep folder gets a PENDING_SYNC marker instead, and `nbeval sync`
creates (or finishes) the parent later and nests the jobs under it.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from omegaconf import DictConfig

from nbeval.tracking import PARENT_RUN_FILE, error_text

log = logging.getLogger(__name__)


class MLflowMultirunParent(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        tracker = instantiate(config.tracking)
        if not tracker.active:
            return
        sweep = Path(config.hydra.sweep.dir)
        sweep.mkdir(parents=True, exist_ok=True)
        overrides = " ".join(config.hydra.overrides.task)
        name, tags = f"multirun {sweep.name}", {"nbeval.sweep_dir": str(sweep.resolve()), "nbeval.overrides": overrides[:5000]}
        try:
            run_id = tracker.start_parent(name, tags)
        except Exception as e:  # noqa: BLE001 — the store is down: the jobs still run and keep their results
            tracker.keep_pending(sweep, e, kind="multirun", name=name, tags=tags, uid=uuid.uuid4().hex, parent_run_id=None)
            log.warning("MLflow tracking at %s failed (%s): the sweep runs without its parent run; upload later with: nbeval sync %s",
                        tracker.target(), error_text(e)[:300], sweep)
            return
        (sweep / PARENT_RUN_FILE).write_text(run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        path = sweep / PARENT_RUN_FILE
        if path.exists():
            tracker, run_id = instantiate(config.tracking), path.read_text().strip()
            try:
                tracker.end_parent(run_id)
            except Exception as e:  # noqa: BLE001 — the parent stays RUNNING until `nbeval sync` finishes it
                tracker.keep_pending(sweep, e, kind="multirun", parent_run_id=run_id)
                log.warning("MLflow tracking at %s failed (%s): the sweep's parent run %s is not marked finished; do it later with: nbeval sync %s",
                            tracker.target(), error_text(e)[:300], run_id, sweep)
