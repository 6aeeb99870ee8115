"""Bradley–Terry ratings against known truth, a plain reference fit, and FastChat's battle schema."""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from nbeval.arena.ratings import SCALE, leaderboard, leaderboards_by, normalise_battles, online_elo, pair_matrices, predicted_win_probability

from conftest import run_cli


def simulate(true: np.ndarray, n: int, seed: int, tie_rate: float = 0.1) -> pd.DataFrame:
    """Voters with known strengths: P(a beats b) = 1 / (1 + 10^((r_b − r_a)/400)); some ties."""
    rng = np.random.default_rng(seed)
    m = len(true)
    a = rng.integers(0, m, n)
    b = (a + rng.integers(1, m, n)) % m
    p = 1 / (1 + 10 ** ((true[b] - true[a]) / 400))
    tie = rng.random(n) < tie_rate
    winner = np.where(tie, "tie", np.where(rng.random(n) < p, "a", "b"))
    names = np.array([f"m{k}" for k in range(m)])
    return pd.DataFrame({"model_a": names[a], "model_b": names[b], "winner": winner})


def test_fit_matches_plain_logistic_regression():
    true = np.array([0.0, 80, -120, 200, 30, -60])
    battles = simulate(true, 4000, seed=1)
    board = leaderboard(battles, rounds=10).set_index("model")
    # Reference: one row per battle, ties as half a win each way (sample weights), no penalty.
    models = sorted(set(battles["model_a"]) | set(battles["model_b"]))
    x = np.zeros((len(battles), len(models)))
    x[np.arange(len(battles)), battles["model_a"].map(models.index)] = 1
    x[np.arange(len(battles)), battles["model_b"].map(models.index)] = -1
    score = battles["winner"].map({"a": 1.0, "b": 0.0, "tie": 0.5}).to_numpy()
    xx, yy, ww = np.r_[x, x], np.r_[np.ones(len(x)), np.zeros(len(x))], np.r_[score, 1 - score]
    lr = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-12, max_iter=10_000).fit(xx, yy, sample_weight=ww)
    ref = SCALE * lr.coef_[0]
    ref = ref - ref.mean() + 1000
    assert np.abs(board.loc[models, "rating"].to_numpy() - ref).max() < 0.01


@pytest.mark.parametrize("ci", ["bootstrap", "sandwich"])
def test_true_ratings_fall_inside_95_percent_cis_about_95_percent_of_the_time(ci):
    # No ties here: ties drawn independently of strength pull every rating towards the mean, so the
    # truth of a tie-free Bradley–Terry world is what the intervals must cover.
    rng = np.random.default_rng(0)
    inside = total = 0
    for sim in range(40):
        true = rng.normal(0, 120, 8)
        centred = true - true.mean() + 1000
        board = leaderboard(simulate(true, 3000, seed=sim, tie_rate=0), rounds=200, seed=sim, ci=ci).set_index("model")
        names = [f"m{k}" for k in range(8)]
        lo, hi = board.loc[names, "ci_low"].to_numpy(), board.loc[names, "ci_high"].to_numpy()
        inside += int(((lo <= centred) & (centred <= hi)).sum())
        total += len(names)
    assert 0.90 <= inside / total <= 0.99, inside / total


def test_sandwich_intervals_are_as_wide_as_the_bootstrap_ones_where_the_model_holds():
    battles = simulate(np.array([0.0, 80, -120, 200, 30, -60]), 20_000, seed=2)
    for anchor in (None, "m3"):
        boot, sandwich = (leaderboard(battles, rounds=400, anchor=anchor, ci=ci).set_index("model") for ci in ("bootstrap", "sandwich"))
        assert (sandwich["rating"] == boot["rating"]).all()
        free = boot.index != anchor
        ratio = (sandwich["ci_high"] - sandwich["ci_low"])[free] / (boot["ci_high"] - boot["ci_low"])[free]
        assert ratio.between(0.85, 1.15).all(), ratio
    with pytest.raises(ValueError, match="ci must be"):
        leaderboard(battles, ci="wald")


def test_inverse_frequency_weighting_undoes_a_pair_sampled_ten_times_as_often():
    # m0 upsets the strongest model m3 in every battle of theirs: the more that pair is sampled, the
    # more it moves the unweighted fit; weighted by inverse pair frequency, every pair counts alike
    battles = simulate(np.array([0.0, 80, -120, 200]), 6000, seed=8)
    pair = (battles["model_a"] + battles["model_b"]).isin(["m0m3", "m3m0"])
    battles.loc[pair, "winner"] = np.where(battles.loc[pair, "model_a"] == "m0", "a", "b")
    oversampled = pd.concat([battles, *[battles[pair]] * 9], ignore_index=True)
    weighted = [leaderboard(b, rounds=20, weighting="inverse_frequency").set_index("model")["rating"] for b in (battles, oversampled)]
    plain = [leaderboard(b, rounds=20).set_index("model")["rating"] for b in (battles, oversampled)]
    assert (weighted[0] - weighted[1]).abs().max() < 0.01
    assert (plain[0] - plain[1]).abs().max() > 50
    with pytest.raises(ValueError, match="weighting must be"):
        leaderboard(battles, weighting="by_voter")


def test_anchor_and_order():
    true = np.array([0.0, 150, 300])
    board = leaderboard(simulate(true, 6000, seed=3), rounds=20, anchor="m0", anchor_rating=1114)
    assert list(board["model"]) == ["m2", "m1", "m0"]
    assert board.set_index("model").loc["m0", "rating"] == pytest.approx(1114)
    assert board.set_index("model").loc["m2", "rating"] == pytest.approx(1114 + 300, abs=40)
    with pytest.raises(ValueError, match="anchor model"):
        leaderboard(simulate(true, 100, seed=3), rounds=2, anchor="nope")


def test_matrices_elo_and_predictions_agree_with_data():
    battles = simulate(np.array([0.0, 200]), 5000, seed=4)
    wins, counts = pair_matrices(battles)
    assert wins.loc["m0", "m1"] + wins.loc["m1", "m0"] == pytest.approx(1)
    assert counts.loc["m0", "m1"] == 5000
    pred = predicted_win_probability(leaderboard(battles, rounds=5))
    assert pred.loc["m1", "m0"] == pytest.approx(wins.loc["m1", "m0"], abs=0.02)
    elo = online_elo(battles)
    assert elo["m1"] > elo["m0"]


def _fastchat():
    """FastChat's rating code as vendored for the benchmark (verbatim, benchmarks/fastchat_rating_systems.py)."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import fastchat_rating_systems

    return fastchat_rating_systems


def test_ratings_equal_fastchats_compute_bt_on_raw_fastchat_battles():
    true = np.random.default_rng(11).normal(0, 150, 12)
    battles = simulate(true, 60_000, seed=11)
    winner = battles["winner"].map({"a": "model_a", "b": "model_b", "tie": "tie"})
    winner[::37] = "tie (bothbad)"
    raw = battles.assign(winner=winner)  # FastChat's schema, pandas' default string columns
    theirs = _fastchat().compute_bt(raw)
    ours = leaderboard(raw, rounds=5).set_index("model")["rating"]
    assert sorted(ours.index) == sorted(theirs.index)
    offset_free = (ours - ours.mean()) - (theirs[ours.index] - theirs.mean())
    assert offset_free.abs().max() <= 0.01, offset_free.abs().max()
    # categoricals, object columns and skips (left out of the fit) give the very same board
    categorical = raw.astype({"model_a": "category", "model_b": "category", "winner": "category"})
    with_skips = pd.concat([raw, raw.head(500).assign(winner="skip")], ignore_index=True).astype(object)
    for other in (categorical, with_skips, normalise_battles(raw)):
        pd.testing.assert_frame_equal(leaderboard(other, rounds=5), leaderboard(raw, rounds=5))


def test_bootstrap_cis_match_fastchats_compute_bootstrap_bt():
    battles = simulate(np.array([0.0, 80, -120, 200, 30]), 20_000, seed=12)
    raw = battles.assign(winner=battles["winner"].map({"a": "model_a", "b": "model_b", "tie": "tie"}))
    boot = _fastchat().compute_bootstrap_bt(raw, num_round=400, num_cpu=1)
    ours = leaderboard(raw, rounds=400, seed=3).set_index("model")
    shift = ours["rating"].mean() - boot.median()[ours.index].mean()
    width = ours["ci_high"] - ours["ci_low"]
    theirs = boot.quantile(0.975) - boot.quantile(0.025)
    assert ((width / theirs[ours.index]) - 1).abs().max() < 0.15
    assert ((ours["ci_low"] - shift) - boot.quantile(0.025)[ours.index]).abs().max() < 0.2 * width.max()


def test_bad_battles_are_refused():
    with pytest.raises(ValueError, match="unknown winner"):
        normalise_battles(pd.DataFrame({"model_a": ["x"], "model_b": ["y"], "winner": ["draw"]}))
    with pytest.raises(ValueError, match="lack columns"):
        normalise_battles(pd.DataFrame({"model_a": ["x"], "winner": ["a"]}))
    with pytest.raises(ValueError, match="against itself"):
        leaderboard(pd.DataFrame({"model_a": ["x", "x"], "model_b": ["y", "x"], "winner": ["a", "b"]}))
    with pytest.raises(ValueError, match="missing model"):
        leaderboard(pd.DataFrame({"model_a": ["x", None], "model_b": ["y", "x"], "winner": ["a", "b"]}))


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_cli_reads_fastchat_battles_and_writes_the_leaderboard(tmp_path, suffix, mlflow_db):
    battles = simulate(np.array([0.0, 100, 250]), 3000, seed=5)
    fastchat = battles.assign(winner=battles["winner"].map({"a": "model_a", "b": "model_b", "tie": "tie (bothbad)"}))
    path = tmp_path / f"battles{suffix}"
    {".jsonl": lambda p: fastchat.to_json(p, orient="records", lines=True), ".csv": lambda p: fastchat.to_csv(p, index=False), ".parquet": fastchat.to_parquet}[suffix](path)
    uri = mlflow_db(tmp_path / "mlflow.db")
    r = run_cli(["arena", "leaderboard", f"battles={path}", f"out={tmp_path / 'board'}", "rounds=50"], tmp_path, {"MLFLOW_TRACKING_URI": uri})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "board" / "ratings.png").stat().st_size > 1000
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("nbeval-arena").experiment_id])
    assert run.data.metrics["arena/rating/m2"] > run.data.metrics["arena/rating/m0"]
    assert run.data.metrics["arena/battles"] == 3000
    assert {"leaderboard_table.json", "ratings.png", "battles.parquet", "win_rate_matrix.csv"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "m2" in r.stdout.splitlines()[1]  # best model first
    csv = pd.read_csv(tmp_path / "board" / "leaderboard.csv")
    assert list(csv.columns) == ["model", "rating", "ci_low", "ci_high", "battles"]
    assert list(csv["model"]) == ["m2", "m1", "m0"] and (csv["ci_low"] <= csv["rating"]).all()
    assert json.loads((tmp_path / "board" / "leaderboard.json").read_text())[0]["model"] == "m2"


def test_cli_sandwich_intervals_and_inverse_frequency_weighting(tmp_path):
    battles = simulate(np.array([0.0, 100, 250]), 3000, seed=5)
    battles.to_csv(tmp_path / "battles.csv", index=False)
    r = run_cli(["arena", "leaderboard", f"battles={tmp_path / 'battles.csv'}", f"out={tmp_path / 'board'}", "ci=sandwich", "weighting=inverse_frequency", "mlflow=false"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "95% CIs from the sandwich covariance" in r.stdout
    csv = pd.read_csv(tmp_path / "board" / "leaderboard.csv").set_index("model")
    expected = leaderboard(battles, weighting="inverse_frequency", ci="sandwich").set_index("model")
    assert list(csv.columns) == ["rating", "ci_low", "ci_high", "battles"]
    assert np.allclose(csv[["rating", "ci_low", "ci_high"]], expected.loc[csv.index, ["rating", "ci_low", "ci_high"]])


def test_per_category_leaderboards_by_suite_and_by_tag(tmp_path):
    # m1 is the better model on counting and the worse one on text: one board would hide both
    counting = simulate(np.array([0.0, 200]), 2000, seed=9).assign(suite="counting", tags=[["count", "colour"]] * 2000)
    text = simulate(np.array([200.0, 0]), 2000, seed=10).assign(suite="text", tags=[["text"]] * 2000)
    battles = pd.concat([counting, text], ignore_index=True)
    by_suite = leaderboards_by(battles, "suite", rounds=20).set_index(["category", "model"])
    assert by_suite.loc[("counting", "m1"), "rating"] - by_suite.loc[("counting", "m0"), "rating"] > 150
    assert by_suite.loc[("text", "m0"), "rating"] - by_suite.loc[("text", "m1"), "rating"] > 150
    alone = leaderboard(counting, rounds=20).set_index("model")
    assert np.allclose(by_suite.loc["counting", "rating"], alone.loc[by_suite.loc["counting"].index, "rating"])
    by_tag = leaderboards_by(battles, "tags", rounds=20)
    assert sorted(by_tag["category"].unique()) == ["colour", "count", "text"] and (by_tag["battles"] == 2000).all()
    with pytest.raises(ValueError, match="no column 'topic'"):
        leaderboards_by(battles, "topic")
    battles.to_parquet(tmp_path / "battles.parquet")
    r = run_cli(["arena", "leaderboard", f"battles={tmp_path / 'battles.parquet'}", f"out={tmp_path / 'board'}", "by=suite", "rounds=20", "mlflow=false"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "per suite: counting, text" in r.stdout
    written = pd.read_csv(tmp_path / "board" / "leaderboard_by_suite.csv")
    assert list(written.columns) == ["category", "model", "rating", "ci_low", "ci_high", "battles"] and len(written) == 4


def test_cli_usage_errors(tmp_path):
    r = run_cli(["arena", "leaderboard", "batles=x.csv"], tmp_path)
    assert r.returncode == 2 and "unknown options batles" in r.stderr


def test_uncertainty_sampling_spends_votes_on_close_and_poorly_measured_pairs():
    from collections import Counter

    from nbeval.arena.sampling import pair_weights, uncertainty_draw, uniform_pairs

    # m0/m1 close and measured with few battles; m2 far above both and well measured.
    battles = pd.concat([simulate(np.array([0.0, 20]), 60, seed=6), simulate(np.array([0.0, 20, 600]), 6000, seed=7).query("model_a == 'm2' or model_b == 'm2'")])
    board = leaderboard(battles, rounds=100)
    weights = {frozenset(p): w for p, w in pair_weights(board).items()}
    pairs = sorted(weights, key=sorted)

    def draws(candidates, k, seed):
        rng = np.random.default_rng(seed)
        return [uncertainty_draw(candidates, weights, rng) for _ in range(k)]

    drawn = draws(pairs, 3000, seed=1)
    counts = Counter(drawn)
    assert counts[frozenset({"m0", "m1"})] > 0.5 * 3000  # uniform would give a third
    assert drawn == draws(pairs, 3000, seed=1)
    uni = uniform_pairs(["m0", "m1", "m2"], 3000, seed=1)
    assert all(abs(v - 1000) < 120 for v in Counter(frozenset(p) for p in uni).values())
    flips = Counter(a for a, b in uni)
    assert all(abs(v - 1000) < 120 for v in flips.values())  # sides randomised
    new = pairs + [frozenset({"m3", x}) for x in ("m0", "m1", "m2")]  # m3 has no votes yet: it weighs as the most uncertain pair
    assert sum(p.__contains__("m3") for p in draws(new, 600, seed=2)) > 0.4 * 600