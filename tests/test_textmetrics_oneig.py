"""OneIG-Bench's text metrics (ED, CR, WAC, text score): hand-computed cases for the functional core
and the suite's pooling, then the whole path on the oracle read by the real OCR."""

from dataclasses import replace

import numpy as np
import pytest
from hydra.utils import instantiate

from nbeval.adapters.oracle import OracleAdapter
from nbeval.records import samples_frame, scores_frame
from nbeval.runner import score_suite
from nbeval.stats import bootstrap_mean, bootstrap_of_means
from nbeval.textmetrics import compare, oneig_text_score

# (truth, reading) → ED, exact match (OneIG's per-image completion), words matched, words requested
CASES = [
    ("Hello, world!", "HELLO WORLD", 0, 1.0, 2, 2),  # completely right under the one normalisation
    ("RED FOX JUMPS", "RED BOX JUMPS", 1, 0.0, 2, 3),  # one wrong word: one substitution
    ("CAT DOG", "", 7, 0.0, 0, 2),  # empty reading: every character of "CAT DOG" inserted
    ("CAT", "THE CAT SAT", 8, 0.0, 1, 1),  # extra words: "THE " and " SAT" cost ED and CR, not WAC
]


@pytest.mark.parametrize(("truth", "read", "ed", "exact", "matched", "requested"), CASES)
def test_compare_gives_oneig_per_sample_parts(truth, read, ed, exact, matched, requested):
    m = compare(truth, read)
    assert (m["edit_distance"], m["exact_match"], m["words_matched"], m["words_requested"]) == (ed, exact, matched, requested)
    assert m["word_recall"] == matched / requested  # the same per-sample count, so defined once


def test_oneig_text_score_combines_dataset_means_and_caps_ed_at_100():
    # the four CASES as a dataset: ED = (0+1+7+8)/4 = 4, CR = 1/4, WAC = (2+2+0+1)/(2+3+2+1) = 5/8
    assert oneig_text_score(4, 0.25, 5 / 8) == pytest.approx(1 - 4 * 0.75 * 0.375 / 100)  # 0.98875
    assert oneig_text_score(250, 0.0, 0.0) == 0.0  # ED capped at 100: never below 0
    assert oneig_text_score(250, 0.5, 0.5) == oneig_text_score(100, 0.5, 0.5) == 0.75
    assert oneig_text_score(60, 1.0, 0.0) == oneig_text_score(60, 0.0, 1.0) == oneig_text_score(0, 0.0, 0.0) == 1.0
    # elementwise, so one call scores every bootstrap resample
    np.testing.assert_allclose(oneig_text_score(np.array([4, 250]), np.array([0.25, 0.5]), np.array([0.625, 0.5])), [0.98875, 0.75])


def test_bootstrap_of_means_with_one_column_is_bootstrap_mean():
    x = np.random.default_rng(1).normal(size=37)
    assert bootstrap_of_means(x[:, None], lambda m: m[..., 0]) == bootstrap_mean(x)


@pytest.fixture
def text_suite(compose_cfg):
    return instantiate(compose_cfg(["suite=[text_rendering]"]).suite.text_rendering)


def test_suite_pools_word_accuracy_over_samples_unlike_word_recall(text_suite):
    """The CASES through the suite's own score and aggregate: WAC is pooled (5/8), word_recall is the
    mean of per-sample ratios ((1 + 2/3 + 0 + 1)/4); CR is exact match."""
    samples = [replace(s, truth=({**s.truth[0], "text": truth},)) for s, (truth, *_) in zip(text_suite.samples(len(CASES), 0), CASES)]
    rows = [row for s, (_, read, *_) in zip(samples, CASES) for row in text_suite.score(s, 0, {"ocr": {"text": read, "boxes": []}})]
    index = {s.id: i for i, s in enumerate(samples)}
    m = text_suite.aggregate(scores_frame(rows, index), samples_frame(samples))
    assert m["completion_rate"] == m["exact_match"] and m["completion_rate"].value == 0.25
    assert m["word_accuracy"].value == pytest.approx(5 / 8)
    assert m["word_recall"].value == pytest.approx((1 + 2 / 3 + 0 + 1) / 4)
    assert m["oneig_text_score"].value == pytest.approx(0.98875)
    # resamples drawing only the samples whose words were all found have WAC 1, hence a score of 1
    assert m["oneig_text_score"].ci_low < 0.98875 < m["oneig_text_score"].ci_high == 1.0
    # per tier too: the samples keep their tiers (words_1, words_2, words_3, digits), one case each.
    # The empty reading: 1 − 7·1·1/100. Extra words: all requested words found (WAC 1), so a score of 1
    assert m["oneig_text_score/tier_words_3"].value == pytest.approx(0.93) and m["oneig_text_score/tier_digits"].value == 1.0
    assert m["word_accuracy/tier_words_2"].value == pytest.approx(2 / 3)
    assert {s.name for s in text_suite.metrics} >= {"completion_rate", "word_accuracy", "oneig_text_score"}
    assert all(text_suite.spec(n).higher_is_better for n in ("completion_rate", "word_accuracy", "oneig_text_score"))


@pytest.mark.slow
def test_oneig_text_score_perfect_on_clean_oracle_and_lower_with_typos(text_suite, ocr_scorer, text_cache):
    n = 24  # four samples per tier
    clean = score_suite(text_suite, OracleAdapter(), lambda role: ocr_scorer, text_cache, n, 0, 8)
    typo = score_suite(text_suite, OracleAdapter(corruption="typo", severity=2), lambda role: ocr_scorer, text_cache, n, 0, 8)
    for r in (clean, typo):
        assert r.n_failed_generations == 0 and r.n_failed_scores == 0
    c, t = clean.metrics, typo.metrics
    assert c["oneig_text_score"].value == 1.0 and c["completion_rate"].value == 1.0 and c["word_accuracy"].value == 1.0
    assert t["oneig_text_score"].ci_high < 1.0
    assert t["completion_rate"].value < c["completion_rate"].value and t["word_accuracy"].value < c["word_accuracy"].value
