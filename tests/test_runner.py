from hydra.utils import instantiate

from nbeval.adapters.oracle import OracleAdapter
from nbeval.runner import score_suite


def test_cache_keys_include_model_and_image_size(compose_cfg, cache):
    cfg = compose_cfg(["suite=[counting]"])
    counter = instantiate(cfg.scorer.counter)
    small = instantiate(cfg.suite.counting, image_size=128)
    big = instantiate(cfg.suite.counting)

    def run(suite, model):
        return score_suite(suite, model, lambda role: counter, cache, 8, 0, 4)

    first = run(small, OracleAdapter())
    assert first.generations["cached"].sum() == 0 and first.cached_readings == 0
    other_size = run(big, OracleAdapter())
    assert other_size.generations["cached"].sum() == 0
    sha = other_size.generations["image_sha256"].iloc[0]
    assert cache.get_image(sha).size == (256, 256)
    other_model = run(big, OracleAdapter(corruption="drop", severity=1))
    assert other_model.generations["cached"].sum() == 0
    assert other_model.metrics["exact_accuracy"].value == 0.0
    again = run(big, OracleAdapter())
    assert again.generations["cached"].sum() == 8 and again.cached_readings == 8
    assert {k: v.value for k, v in again.metrics.items()} == {k: v.value for k, v in other_size.metrics.items()}


def test_a_suite_without_target_is_built_from_the_entry_point_registry(compose_cfg, tmp_path):
    import pytest

    from conftest import evaluate
    from nbeval.registry import available, load

    assert available()["counting"] == "suites.counting:CountingSuite"
    cfg = compose_cfg(["model=oracle", "suite=[counting]", "~suite.counting._target_", "n=4"])
    res = evaluate(cfg, tmp_path / "out")
    assert res["suites"]["counting"]["metrics"]["exact_accuracy"]["value"] == 1.0
    with pytest.raises(KeyError, match="did you mean counting"):
        load("countng")


def test_aggregates_come_from_the_cache_for_the_same_tables_and_suite(compose_cfg, cache, monkeypatch):
    import json

    cfg = compose_cfg(["suite=[counting]"])
    counter, suite = instantiate(cfg.scorer.counter), instantiate(cfg.suite.counting)
    computed = []
    aggregate = type(suite).aggregate
    monkeypatch.setattr(type(suite), "aggregate", lambda self, scores, samples: computed.append(len(scores)) or aggregate(self, scores, samples))

    def run(n: int = 8):
        result = score_suite(suite, OracleAdapter(corruption="drop", severity=1), lambda role: counter, cache, n, 0, 4)
        return json.dumps({k: v.to_dict() for k, v in result.metrics.items()})  # in order, NaN included

    first = run()
    assert run() == first and len(computed) == 1, "the same tables and suite: the metrics come from the cache"
    run(n=12)
    assert len(computed) == 2, "other tables"
    suite.version = "changed"
    assert run() == first and len(computed) == 3, "another suite version"


def test_a_fresh_reading_is_what_the_cache_gives_back(cache):
    """Key order included: suites make rows in a reading's order, so a cold and a warm run would
    otherwise make the same scores in another row order (and miss the aggregate cache)."""
    from PIL import Image

    from nbeval.runner import read
    from nbeval.scorers.base import Scorer

    class Unsorted(Scorer):
        def read(self, images, truths):
            return [{"preservation": {"ssim": 1.0}, "fidelity": {"ssim": 0.5, "kept": 1.0}} for _ in images]

    items = [(cache.put_image(Image.new("RGB", (8, 8))), {})]
    (cold,), hits = read(Unsorted(), items, cache, 4, "test")
    (warm,), hits_again = read(Unsorted(), items, cache, 4, "test")
    assert (hits, hits_again) == (0, 1)
    assert cold == warm and list(cold) == list(warm) == ["fidelity", "preservation"] and list(cold["fidelity"]) == ["kept", "ssim"]
