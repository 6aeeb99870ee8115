"""A run whose readings are all cached must not pay for models it never uses: the default scorers give
their fingerprints and cards, and the default reference model its fingerprint, without importing torch,
open_clip, easyocr or torchmetrics, and those are the fingerprints a loaded backbone gives (issue 20: a
warm run in seconds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from nbeval.scorers.clip import ClipAdherenceScorer

HEAVY = ("torch", "open_clip", "easyocr", "torchmetrics", "transformers", "cv2")

PROBE = f"""
import json, sys
from hydra.utils import instantiate
from nbeval import api

cfg = api.compose(["suite=[text_rendering,counting,drift,adherence,identity]", "tracking=none"])
scorers = {{role: instantiate(node) for role, node in cfg.scorer.items() if role in ("ocr", "pixels", "clip", "identity")}}
out = {{role: [s.fingerprint, s.card()] for role, s in scorers.items()}}
out["model"] = [instantiate(cfg.model).fingerprint]  # the default reference model, never loaded
if sys.argv[1] == "read":  # load the backbone as a cold run does: refused if it is not what the fingerprint said
    from PIL import Image
    scorers["clip"].read([Image.new("RGB", (64, 64))], [{{"caption": "a red circle", "negatives": {{}}}}])
print(json.dumps({{"scorers": out, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def _probe(cache_dir, mode: str) -> dict:
    env = {**os.environ, "NBEVAL_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_fingerprints_need_no_model_once_memoised(tmp_path):
    first = _probe(tmp_path, "read")  # empty memo: the backbone loads to learn its preprocessing
    assert "open_clip" in first["heavy"]
    second = _probe(tmp_path, "fingerprint")
    assert second["heavy"] == [], f"fingerprinting imported {second['heavy']}"
    assert second["scorers"] == first["scorers"]  # same fingerprints and cards as with the backbone loaded


def test_a_memo_that_disagrees_with_the_loaded_backbone_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("NBEVAL_CACHE_DIR", str(tmp_path))
    ClipAdherenceScorer().description()  # the memo, written from the loaded backbone
    (entry,) = (tmp_path / "memos" / "clip").glob("*.json")
    memo = json.loads(entry.read_text())
    entry.write_text(json.dumps({"key": memo["key"], "value": {**memo["value"], "preprocess": "something else"}}))
    stale = ClipAdherenceScorer()
    assert stale.settings()["preprocess"] == "something else"  # what the fingerprint would be built from
    with pytest.raises(RuntimeError, match="delete the memo"):
        stale.backbone


def _run(tmp_path, name: str) -> tuple[dict[str, bytes], str]:
    """`nbeval run` of the counting suite on the oracle: its figures' bytes, and its -X importtime log."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-X", "importtime", "-m", "nbeval.cli", "run", "model=oracle", "suite=[counting]", "n=8", "tracking=none",
           f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / name}"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / name / "counting"
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}, done.stderr


@pytest.mark.slow
def test_a_warm_run_serves_its_figures_from_the_cache_without_matplotlib(tmp_path):
    drawn, log = _run(tmp_path, "cold")
    assert "matplotlib.pyplot" in log and {"sample_grid.png", "plots/counting_breakdown.png"} <= set(drawn)
    served, log = _run(tmp_path, "warm")
    assert served == drawn  # byte for byte
    assert "matplotlib" not in log and "scipy" not in log  # nothing drawn, nothing counted
