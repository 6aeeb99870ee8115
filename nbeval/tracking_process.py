"""MLflow logging in a process started with the run, so a run never waits for MLflow's imports.

`import mlflow` and its SQL store's modules cost a process about 4–5 s on the 2-core machine, about as
much as the default job's whole warm run (every image and reading cached). `TrackingProcess` starts
this module when the run starts (`MLflowTracker.ready_in_background`): it imports them on the other
core while the run works, then waits for the run's folder and logs it with `MLflowTracker.log_or_keep`,
the call a run in one process makes (the PENDING_SYNC marker, the folder lock, `nbeval sync`: all
unchanged). The run's own process never imports MLflow. When this process ends without an answer
(killed, crashed), the run logs in its own process, as it did before.

Protocol: the tracker's settings as argv[1] (JSON); on stdin one request line (`out_dir`,
`parent_run_id`, `tags`), or end of input: nothing to log; on stdout one answer line (`run_id`, and
`records`: the upload's log records, which the run emits into its own log, `cli.log` included).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)


class TrackingProcess:
    """The child process, from the run's side."""

    def __init__(self, settings: dict) -> None:
        self._proc = subprocess.Popen([sys.executable, "-m", __name__, json.dumps(settings)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def log_or_keep(self, out_dir: Path, parent_run_id: str | None, tags: dict) -> tuple[bool, str | None]:
        """(answered, the MLflow run id or None when the run was kept for `nbeval sync`). Not
        answered: the process is gone, the caller logs the folder itself."""
        request = {"out_dir": str(Path(out_dir).resolve()), "parent_run_id": parent_run_id, "tags": tags}
        try:
            out, _ = self._proc.communicate(json.dumps(request) + "\n")
            answer = json.loads(out.strip().splitlines()[-1])
        except (OSError, ValueError, IndexError):  # a broken pipe, no answer line
            self._proc.wait()
            log.warning("the MLflow tracking process ended without an answer (exit code %s); logging from the run's own process", self._proc.returncode)
            return False, None
        for level, name, message in answer["records"]:
            logging.getLogger(name).log(level, "%s", message)
        return True, answer["run_id"]

    def close(self) -> None:
        """Stop it when it was never asked (the run failed or was interrupted)."""
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[tuple[int, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.levelno, record.name, record.getMessage()))


def main() -> None:
    from nbeval.tracking import MLflowTracker

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
