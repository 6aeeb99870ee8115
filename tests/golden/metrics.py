"""Record every suite's metrics as the current code computes them (tests/test_golden_metrics.py then
holds later code to them, to the last digit). Regenerate only when numbers change on purpose:

    OMP_NUM_THREADS=1 python tests/golden/metrics.py

The runs: the oracle on every suite with a config that runs on its own (suite=arena compares models
and suite=prompts needs a prompts file: their aggregation is another suite's, or `estimate`), and the
oracle in another style (severity 3), whose metrics are not all 1.0, so the bootstraps' draws show,
on the suites that do not read much text (OCR is most of a run's time).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hydra.core.global_hydra import GlobalHydra

from nbeval import api

HERE = Path(__file__).parent
FILE = HERE.parent / "data" / "golden_metrics.json"
GENEVAL = HERE.parent / "data" / "geneval_metadata.jsonl"
EVERY = "text_rendering,counting,drift,drift_gt,drift_combined,adherence,identity,geneval"
RUNS = {
    "oracle": ["model=oracle", f"suite=[{EVERY}]", "n=40", "seed=0", f"suite.geneval.path={GENEVAL}"],
    "oracle_style_3": ["model=oracle_style", "model.severity=3", "suite=[counting,drift,drift_gt,adherence,identity,geneval]", "n=40", "seed=0",
                       f"suite.geneval.path={GENEVAL}"],
}


def metrics(overrides: list[str], workdir: Path, out: str = "out") -> dict[str, dict]:
    """Suite → metric → its record in results.json, for a whole run (`nbeval run`'s path) in workdir
    (its cache there: a second call is a warm run)."""
    GlobalHydra.instance().clear()
    cfg = api.compose([f"cache_dir={workdir / 'cache'}", "tracking=none", *overrides])
    res = api.finalize(api.evaluate(cfg), workdir / out, api.make_tracker(cfg.tracking))
    return {name: suite["metrics"] for name, suite in res["suites"].items()}


def canonical(runs: dict) -> str:
    """What two recordings must equal: JSON with Python's shortest round-trip floats (and NaN)."""
    return json.dumps(runs, sort_keys=True, indent=1)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        runs = {name: {"overrides": [o.replace(str(GENEVAL), "tests/data/geneval_metadata.jsonl") for o in overrides],
                       "metrics": metrics(overrides, Path(tmp) / name)} for name, overrides in RUNS.items()}
    FILE.write_text(canonical({"command": "OMP_NUM_THREADS=1 python tests/golden/metrics.py", "runs": runs}) + "\n")
    print("wrote", FILE)
