"""Scorer validity on the oracle: near-perfect on clean renders, monotonically worse as damage rises.
Full tables at n=200 (n=100 for text corruptions): benchmarks/results/validity_*.md."""

import pytest
from hydra.utils import instantiate

from nbeval.adapters.oracle import OracleAdapter
from nbeval.runner import score_suite

TOL = 0.05  # sampling noise allowed between adjacent severities at these n


def _sweep(suite, scorer, cache, corruption: str, n: int) -> list[dict]:
    out = []
    for sev in range(6):
        r = score_suite(suite, OracleAdapter(corruption=corruption, severity=sev), lambda role: scorer, cache, n, 0, 16)
        assert r.n_failed_generations == 0 and r.n_failed_scores == 0
        out.append({k: v.value for k, v in r.metrics.items()})
    return out


def _assert_monotone(curve: list[dict], metric: str, higher_is_better: bool | None) -> None:
    vals = [abs(c[metric]) if higher_is_better is None else c[metric] for c in curve]
    sign = 1 if higher_is_better else -1  # quality = sign * value must not rise with severity
    for a, b in zip(vals, vals[1:]):
        assert sign * b <= sign * a + TOL, f"{metric} not monotone: {vals}"


@pytest.fixture
def counting(compose_cfg):
    cfg = compose_cfg(["suite=[counting]"])
    return instantiate(cfg.suite.counting), instantiate(cfg.scorer.counter)


def test_counter_exact_on_200_clean_oracle_samples(counting, cache):
    suite, counter = counting
    r = score_suite(suite, OracleAdapter(), lambda role: counter, cache, 200, 0, 32)
    assert r.metrics["exact_accuracy"].value >= 0.99
    assert r.metrics["mae"].value <= 0.01


@pytest.mark.slow
@pytest.mark.parametrize("corruption", ["blur", "noise", "jpeg", "shift", "drop", "add", "recolour"])
def test_counting_metrics_fall_with_severity(counting, cache, corruption):
    suite, counter = counting
    curve = _sweep(suite, counter, cache, corruption, 32)
    for m in suite.metrics:
        if m.name in curve[0]:
            _assert_monotone(curve, m.name, m.higher_is_better)
    assert curve[5]["exact_accuracy"] < curve[0]["exact_accuracy"] - 0.3
    assert curve[5]["mae"] > curve[0]["mae"] + 0.3


@pytest.fixture
def text(compose_cfg, ocr_scorer):
    cfg = compose_cfg(["suite=[text_rendering]"])
    return instantiate(cfg.suite.text_rendering), ocr_scorer


@pytest.mark.slow
def test_ocr_reads_clean_oracle_text(text, text_cache):
    suite, ocr = text
    r = score_suite(suite, OracleAdapter(), lambda role: ocr, text_cache, 60, 0, 8)
    assert r.metrics["exact_match"].value >= 0.95
    assert r.metrics["cer"].value <= 0.02
    # every tier is represented and read
    assert all(r.metrics[f"exact_match/tier_{t}"].n == 10 for t in suite.tiers)


@pytest.mark.slow
@pytest.mark.parametrize("corruption", ["blur", "typo", "shift"])
def test_text_metrics_fall_with_severity(text, text_cache, corruption):
    """Noise and JPEG are left out: easyocr reads the world's bold black text through noise σ=80 and
    JPEG quality 2 almost perfectly (benchmarks/results/validity_text_rendering.md), a property of the
    scorer, not a defect of the metrics."""
    suite, ocr = text
    curve = _sweep(suite, ocr, text_cache, corruption, 18)
    for m in suite.metrics:
        _assert_monotone(curve, m.name, m.higher_is_better)
    assert curve[5]["exact_match"] < curve[0]["exact_match"] - 0.3
    assert curve[5]["cer"] > curve[0]["cer"] + 0.1
