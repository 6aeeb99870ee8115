import numpy as np
import pytest

from nbeval.stats import bootstrap_mean, proportion, wilson
from nbeval.textmetrics import compare, edit_distance, normalise


def test_wilson_matches_published_values():
    # Newcombe (1998), Table I: 0/10 → [0, 0.2775], 15/148 → [0.0624, 0.1605]
    e = wilson(0, 10)
    assert e.value == 0 and e.ci_low == pytest.approx(0, abs=1e-12) and e.ci_high == pytest.approx(0.2775, abs=1e-4)
    e = wilson(15, 148)
    assert e.ci_low == pytest.approx(0.0624, abs=1e-4) and e.ci_high == pytest.approx(0.1605, abs=1e-4)


def test_proportion_ignores_unscored():
    e = proportion(np.array([1, 0, np.nan, 1]))
    assert e.n == 3 and e.value == pytest.approx(2 / 3)


def test_bootstrap_ci_covers_the_true_mean_about_95_percent():
    rng = np.random.default_rng(0)
    hits = 0
    for i in range(200):
        e = bootstrap_mean(rng.exponential(1.0, 80), n_boot=500, seed=i)
        hits += e.ci_low <= 1.0 <= e.ci_high
    assert 0.88 <= hits / 200 <= 0.99


def test_bootstrap_is_deterministic_for_a_seed():
    x = np.arange(30.0)
    assert bootstrap_mean(x, seed=3) == bootstrap_mean(x, seed=3)


def test_normalisation_is_the_documented_one():
    assert normalise("  Hello,  world! ") == "HELLO WORLD"
    assert normalise("ﬁne") == "FINE"  # NFKC ligature
    assert normalise("0") != normalise("O")


def test_text_metrics():
    assert edit_distance("KITTEN", "SITTING") == 3
    m = compare("HELLO WORLD", "hello word")
    assert m["exact_match"] == 0 and m["cer"] == pytest.approx(1 / 11) and m["word_recall"] == 0.5
    assert compare("A B", "b a")["word_recall"] == 1.0
    assert compare("ABC", "")["cer"] == 1.0 and compare("ABC", "")["ned"] == 1.0


def test_ci_bars_tolerate_bounds_a_rounding_error_inside_the_mean():
    from nbeval.plots import bar_with_ci, plt
    from nbeval.stats import Estimate

    fig, ax = plt.subplots()
    bar_with_ci(ax, {"a": Estimate(0.1, 0.1 + 1e-17, 0.2, 5, "bootstrap"), "b": Estimate(0.5, 0.4, 0.5 - 1e-17, 5, "bootstrap")}, "t")
    plt.close(fig)
