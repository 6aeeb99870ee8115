"""`nbeval sync`: upload the runs that were kept locally while the tracking store was down.

A run folder whose MLflow upload failed (or never finished) holds a `PENDING_SYNC` marker (see
nbeval/tracking.py); so does a multirun's sweep folder whose parent run could not be created or
finished. `nbeval sync` finds the markers, creates or finishes the sweeps' parent runs first, then
uploads each run through the same `MLflowTracker.log_run` a run uses — to the store named in the
marker unless `--uri` says otherwise — writes the MLflow run id into its results.json and removes the
marker. A folder already in MLflow (tag `nbeval.run_uid`) is not uploaded again, so running it twice
uploads nothing the second time. Exit code: 0 when nothing is left pending, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nbeval.tracking import PARENT_RUN_FILE, PENDING_FILE, MLflowTracker, error_text, folder_lock, read_pending, record_run_id, write_pending

DEFAULT_DIRS = ("outputs", "multirun")  # Hydra's run and sweep folders, relative to where `nbeval run` ran


def find_pending(paths: list[Path]) -> list[tuple[Path, dict]]:
    """(folder, marker) for every marked folder at or under `paths`: sweeps first, then runs."""
    found: dict[Path, dict] = {}
    for root in paths:
        for marker in ([root / PENDING_FILE] if (root / PENDING_FILE).is_file() else []) + sorted(root.rglob(PENDING_FILE)):
            folder = marker.parent.resolve()
            if folder not in found:
                try:
                    found[folder] = read_pending(folder) or {}
                except (OSError, ValueError) as e:
                    found[folder] = {"kind": "unreadable", "error": error_text(e)}
    return sorted(found.items(), key=lambda kv: (kv[1].get("kind") != "multirun", str(kv[0])))


def _sweep_parent(record: dict) -> str | None:
    """The parent run of a multirun job: the one it was given, else the one `nbeval sync` made since."""
    if record.get("parent_run_id"):
        return record["parent_run_id"]
    sweep = (record.get("tags") or {}).get("nbeval.sweep_dir")
    if not sweep or not (Path(sweep) / PARENT_RUN_FILE).is_file():
        return None
    return (Path(sweep) / PARENT_RUN_FILE).read_text().strip() or None


def sync_folder(folder: Path, record: dict, uri: str | None = None) -> tuple[str, str]:
    """Upload one marked folder. Returns (outcome, detail): outcome is "uploaded", "present" (it was
    already in MLflow), "sweep" (a multirun's parent run made or finished), "pending" (failed again:
    the marker stays, with the new error) or "busy" (another process is uploading it)."""
    tracker = MLflowTracker(uri or record.get("uri"), record.get("experiment", "nbeval"))
    kind = record.get("kind")
    if kind == "multirun":
        try:
            run_id = tracker.finish_multirun(record, folder)
        except Exception as e:  # noqa: BLE001 — reported; the marker stays for the next sync
            write_pending(folder, {**record, "error": error_text(e)})
            return "pending", error_text(e)
        (folder / PENDING_FILE).unlink(missing_ok=True)
        return "sweep", f"multirun parent run {run_id} at {tracker.target()}"
    if kind != "run" or not (folder / "results.json").is_file():
        return "pending", f"not a run folder with results.json (marker kind {kind!r}: {record.get('error', '')})"
    with folder_lock(folder, wait=False) as mine:
        if not mine:
            return "busy", "another process is uploading it now"
        try:
            res = json.loads((folder / "results.json").read_text())
            present = tracker.find_logged(folder)
            run_id = present or tracker.log_run(res, folder, _sweep_parent(record), record.get("tags") or {})
        except Exception as e:  # noqa: BLE001 — reported; the marker stays for the next sync
            write_pending(folder, {**record, "error": error_text(e)})
            return "pending", error_text(e)
        record_run_id(folder, run_id)
        (folder / PENDING_FILE).unlink(missing_ok=True)
    return ("present" if present else "uploaded"), f"run {run_id} at {tracker.target()}"


SYNC_USAGE = "Upload the runs kept locally while the tracking server was down (folders holding PENDING_SYNC)"


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="nbeval sync", description=SYNC_USAGE + ". Exit code 0 when nothing is left pending, 1 otherwise.")
    p.add_argument("dirs", nargs="*", type=Path, help=f"run, sweep or output folders to search (default: ./{' and ./'.join(DEFAULT_DIRS)})")
    p.add_argument("--uri", default=None, help="upload there instead of the tracking URI each marker names (e.g. the server moved)")
    p.add_argument("--dry-run", action="store_true", help="list what would be uploaded, upload nothing")
    args = p.parse_args(argv)
    roots = args.dirs or [Path(d) for d in DEFAULT_DIRS if Path(d).is_dir()]
    missing = [d for d in roots if not d.is_dir()]
    if missing:
        print(f"nbeval sync: no such folder: {', '.join(map(str, missing))}", file=sys.stderr)
        sys.exit(2)
    pending = find_pending(roots)
    if not pending:
        where = ", ".join(map(str, roots)) or f"./{' or ./'.join(DEFAULT_DIRS)} (neither is here: name the folders)"
        print(f"nbeval sync: nothing to upload (no {PENDING_FILE} under {where})")
        return
    counts: dict[str, int] = {}
    for folder, record in pending:
        if args.dry_run:
            outcome, detail = "would upload", f"{record.get('kind')} → {args.uri or record.get('uri')} (kept since {record.get('since')}: {record.get('error', '')[:200]})"
        else:
            outcome, detail = sync_folder(folder, record, args.uri)
        counts[outcome] = counts.get(outcome, 0) + 1
        print(f"{outcome:8s} {folder}: {detail}", flush=True)
    print("nbeval sync: " + ", ".join(f"{n} {k}" for k, n in counts.items()) + (f"; {counts['pending']} still pending — run it again" if counts.get("pending") else ""))
    sys.exit(1 if counts.get("pending") or counts.get("busy") else 0)
