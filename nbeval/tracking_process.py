"""MLflow logging in a process started with the run, so a run never waits for MLflow's imports.

`import mlflow` and its SQL store's modules cost a process about 4–5 s on the 2-core machine, about as
much as the default job's whole warm run (every image and reading cached). `MLflowTracker.
ready_in_background` starts this module when the run starts (nbeval.tracking.TrackingProcess): it
imports them on the other core while the run works, then waits for the run's folder and logs it with
`MLflowTracker.log_or_keep`, the call a run in one process makes (the PENDING_SYNC marker, the folder
lock, `nbeval sync`: all unchanged). The run's own process never imports MLflow. When this process
ends without an answer (killed, crashed), the run logs in its own process, as it did before.

Protocol: the tracker's settings as argv[1] (JSON); on stdin one request line (`out_dir`,
`parent_run_id`, `tags`), or end of input: nothing to log; on stdout one answer line (`run_id`, and
`records`: the upload's log records, which the run emits into its own log, `cli.log` included).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from nbeval.tracking import MLflowTracker


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[tuple[int, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.levelno, record.name, record.getMessage()))


def main() -> None:
    answer = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever MLflow or its store prints goes to stderr: stdout carries the answer only
    tracker = MLflowTracker(**json.loads(sys.argv[1]))
    tracker.preload()
    line = sys.stdin.readline()
    if not line:
        return
    request = json.loads(line)
    records = _Records()
    logging.getLogger().addHandler(records)
    logging.getLogger().setLevel(logging.INFO)
    out_dir = Path(request["out_dir"])
    res = json.loads((out_dir / "results.json").read_text())
    run_id = tracker.log_or_keep(res, out_dir, request["parent_run_id"], request["tags"])
    answer.write(json.dumps({"run_id": run_id, "records": records.records}) + "\n")
    answer.flush()


if __name__ == "__main__":
    main()
