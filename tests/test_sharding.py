"""Sharding (`suite.shard=i/k`) and `nbeval merge`: a 4-shard joblib multirun, merged, is the unsharded
run — the same tables row for row, the same metrics and CIs to the last bit, the same samples — and
shards that are not the parts of one run are refused."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from conftest import run_cli
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from mlflow import MlflowClient
from pandas.testing import assert_frame_equal
from PIL import Image

from nbeval.adapters.base import GenResult, ModelAdapter
from nbeval.cache import Cache
from nbeval.api import CONFIG_MODULE
from nbeval.records import Sample, Score
from nbeval.runner import aggregate, parse_shard, score_suite, shard_block
from nbeval.scorers.base import Scorer
from nbeval.sharding import MergeError, merge, merge_tables
from nbeval.stats import bootstrap_mean
from nbeval.suite import MetricSpec, Suite

pytestmark = pytest.mark.xdist_group("test_sharding")  # one worker: the module's `runs` fixture (a whole run, a 4-shard multirun and a merge) is made once

TABLES = ("samples", "generations", "scores")


# --- shard specs and blocks -------------------------------------------------------------------------


def test_shard_spec_is_i_of_k():
    assert parse_shard(None) is None and parse_shard("0/4") == (0, 4) and parse_shard("3/4", 200) == (3, 4)
    for bad in ("4/4", "1/0", "-1/4", "a/4", "2", "1/4/2"):
        with pytest.raises(ValueError, match="i/k"):
            parse_shard(bad)
    with pytest.raises(ValueError, match="empty"):
        parse_shard("0/8", 5)


def test_shard_blocks_partition_every_sample_list_in_whole_batches():
    for n in range(70):
        for k in range(1, 9):
            for unit in (1, 3, 16):
                blocks = [list(range(n))[shard_block(n, i, k, unit)] for i in range(k)]
                assert [x for b in blocks for x in b] == list(range(n))  # in order, each sample exactly once
                whole = -(-n // unit) >= k  # enough batches for every shard
                assert all(b[0] % (unit if whole else 1) == 0 for b in blocks if b)  # blocks start at batch boundaries
                assert max(map(len, blocks)) - min(map(len, blocks)) <= (unit if whole else 1)


def test_a_bad_shard_is_refused_before_any_work(compose_cfg, tmp_path):
    from conftest import evaluate

    with pytest.raises(ValueError, match="0 <= i < k"):
        evaluate(compose_cfg(["model=oracle", "suite=[counting]", "n=8", "suite.shard=4/4"]), tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- the merge restores the runner's row order, failures included -----------------------------------


class _Chains(Suite):
    """Chains of 0–3 edits; aggregates in row order, so a merge that reorders rows changes its CIs."""

    name = "chains"
    scorers = {"brightness": dict}
    capabilities = frozenset({"generate", "edit"})
    metrics = (MetricSpec("level", True, "red level"), MetricSpec("spread", None, "max − min level over a chain"))

    def samples(self, n, seed):
        return [Sample(f"chains-{i}", self.name, f"prompt {i}", tuple({"i": i, "t": t} for t in range(i % 4 + 1)), seed + i,
                       tuple(f"edit {t}" for t in range(1, i % 4 + 1))) for i in range(n)]

    def score(self, sample, turn, readings):
        if sample.id == "chains-7" and turn == 1:
            raise ValueError("a suite bug")
        level = readings["brightness"]["red"]
        return [Score(sample.id, turn, "brightness", "level", level), Score(sample.id, turn, "brightness", "parity", float(turn % 2))]

    def score_sample(self, sample, readings):
        levels = [readings[t]["brightness"]["red"] for t in sorted(readings)]
        return [Score(sample.id, -1, "suite", "spread", float(max(levels) - min(levels)))]

    def aggregate(self, scores, samples):
        return {m: bootstrap_mean(scores.loc[scores["metric"] == m, "value"].to_numpy()) for m in ("level", "spread")}


class _Flaky(ModelAdapter):
    name = "flaky"
    capabilities = frozenset({"generate", "edit"})

    @staticmethod
    def _image(sample_id: str, turn: int) -> Image.Image:
        i = int(sample_id.split("-")[1])
        return Image.new("RGB", (8, 8), ((37 * i + 11 * turn) % 256, 40 * turn, 0))

    def generate(self, requests):
        return [GenResult(None, 0.0, "refused") if r.sample_id == "chains-5" else GenResult(self._image(r.sample_id, 0)) for r in requests]

    def edit(self, requests):
        failing = {("chains-3", 2), ("chains-11", 1), ("chains-14", 1)}
        return [GenResult(None, 0.0, "edit failed") if (r.sample_id, r.turn) in failing else GenResult(self._image(r.sample_id, r.turn)) for r in requests]


class _Red(Scorer):
    name = "brightness"

    def read(self, images, truths):
        reds = [im.getpixel((0, 0))[0] for im in images]
        if 77 in reds:  # chains-9, turn 0: one unreadable image
            raise ValueError("unreadable")
        return [{"red": r} for r in reds]


def test_merged_tables_are_the_unsharded_tables_row_for_row(tmp_path):
    suite, model, scorer = _Chains(), _Flaky(), _Red()
    whole = score_suite(suite, model, lambda role: scorer, Cache(tmp_path / "a"), 16, 0, 4)
    parts = [score_suite(suite, model, lambda role: scorer, Cache(tmp_path / "b"), 16, 0, 4, shard=(i, 3)) for i in range(3)]
    assert [len(p.samples) for p in parts] == [4, 4, 8]  # whole batches of 4
    assert whole.n_failed_generations == 9 and whole.n_failed_scores == 2  # the failures are in the tables
    merged = merge_tables([{t: getattr(p, t) for t in TABLES} for p in parts])
    for t in TABLES:
        assert_frame_equal(merged[t], getattr(whole, t), check_exact=True)
    naive = pd.concat([p.generations for p in parts], ignore_index=True)
    assert not naive.equals(whole.generations)  # shards concatenated as they are would not do
    valid = merged["scores"][merged["scores"]["error"].isna()]
    assert suite.aggregate(valid, merged["samples"]) == whole.metrics
    # the merged tables are the whole run's to the byte: its cached aggregate serves them, no new entry
    cache = Cache(tmp_path / "a")
    entries = cache.conn.execute("SELECT COUNT(*) FROM aggregates").fetchone()[0]
    assert aggregate(suite, valid, merged["samples"], cache) == whole.metrics
    assert cache.conn.execute("SELECT COUNT(*) FROM aggregates").fetchone()[0] == entries == 1


# --- the real command: unsharded run, 4-shard joblib multirun, merge -----------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory, mlflow_db):
    """The same work unsharded and as `nbeval run -m suite.shard=0/4,1/4,2/4,3/4` (the default joblib
    launcher), each computing everything in its own cache, then `nbeval merge <sweep>`. CLIP
    embeddings change in the last bits with the batch they are computed in: shards are whole batches
    (batch_size=2 here), so every image is read in the same batch as unsharded."""
    tmp = tmp_path_factory.mktemp("sharding")
    env = {"MLFLOW_TRACKING_URI": mlflow_db(tmp / "mlflow.db"), "OMP_NUM_THREADS": "1"}
    common = ["model=oracle", "suite=[counting,identity]", "n=8", "seed=3", "batch_size=2"]
    r = run_cli(["run", *common, f"cache_dir={tmp / 'cache_whole'}", f"hydra.run.dir={tmp / 'whole'}"], tmp, env)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_cli(["run", "-m", "suite.shard=0/4,1/4,2/4,3/4", *common, f"cache_dir={tmp / 'cache_shards'}", f"hydra.sweep.dir={tmp / 'sweep'}"], tmp, env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Joblib.Parallel" in r.stderr + r.stdout
    r = run_cli(["merge", str(tmp / "sweep")], tmp, env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "merged 4 shards" in r.stdout
    return {"tmp": tmp, "env": env, "whole": tmp / "whole", "sweep": tmp / "sweep", "merged": tmp / "sweep" / "merged"}


def _results(d):
    return json.loads((d / "results.json").read_text())


@pytest.mark.slow
def test_four_joblib_shards_merged_equal_the_unsharded_run(runs):
    whole, merged = _results(runs["whole"]), _results(runs["merged"])
    shards = [_results(runs["sweep"] / str(i)) for i in range(4)]
    assert sorted(s["shard"]["spec"] for s in shards) == ["0/4", "1/4", "2/4", "3/4"]
    assert [s["suites"]["counting"]["n_samples"] for s in shards] == [2, 2, 2, 2]
    assert merged["config"]["suite"]["shard"] is None and "shard" not in merged
    assert [m["shard"] for m in merged["merged_from"]] == ["0/4", "1/4", "2/4", "3/4"]
    for name in ("counting", "identity"):
        w, m = whole["suites"][name], merged["suites"][name]
        assert m["metrics"] == w["metrics"]  # values, CIs, n, method: bit for bit
        for key in ("samples_fingerprint", "n_samples", "n_failed_generations", "n_failed_scores", "version", "params"):
            assert m[key] == w[key], key
        for t in TABLES:
            a, b = pd.read_parquet(runs["whole"] / w["tables"][t]), pd.read_parquet(runs["merged"] / m["tables"][t])
            if t == "generations":  # timings differ; the images (sha256) must not
                a, b = a.drop(columns="seconds"), b.drop(columns="seconds")
            assert_frame_equal(b, a, check_exact=True)  # in the unsharded run's row order, not only as sets
        assert {p.name for p in (runs["merged"] / name / "plots").iterdir()} == {p.name for p in (runs["whole"] / name / "plots").iterdir()}
    assert (runs["merged"] / "summary.md").read_text().split("\n- ")[0] == (runs["whole"] / "summary.md").read_text().split("\n- ")[0]

    client = MlflowClient(tracking_uri=runs["env"]["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("nbeval")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`nbeval.kind` = 'multirun'")
    shard_runs = client.search_runs([exp.experiment_id], "tags.`nbeval.kind` = 'shard'")
    assert sorted(r.data.tags["nbeval.shard"] for r in shard_runs) == ["0/4", "1/4", "2/4", "3/4"]
    assert {r.data.tags["mlflow.parentRunId"] for r in shard_runs} == {parent.info.run_id}
    by_id = {r.info.run_id: r for r in client.search_runs([exp.experiment_id], "tags.`nbeval.kind` = 'run'")}
    m_run, w_run = by_id[merged["mlflow_run_id"]], by_id[whole["mlflow_run_id"]]
    assert m_run.data.metrics == w_run.data.metrics
    assert m_run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert set(m_run.data.tags["nbeval.merged_from"].split(",")) == {r.info.run_id for r in shard_runs}
    assert m_run.data.tags["nbeval.choice.model"] == "oracle" and m_run.data.params["suite.shard"] == "null"


@pytest.mark.slow
def test_merge_refuses_shards_that_are_not_one_run(runs, tmp_path):
    def copy(name):
        d = tmp_path / name
        shutil.copytree(runs["sweep"], d, ignore=shutil.ignore_patterns("merged"))
        return d

    def edit(path, change):
        res = json.loads(path.read_text())
        change(res)
        path.write_text(json.dumps(res))

    missing = copy("missing")
    shutil.rmtree(missing / "2")
    with pytest.raises(MergeError, match="missing shard 2/4"):
        merge([missing])
    r = run_cli(["merge", str(missing), "mlflow=false"], tmp_path, runs["env"])
    assert r.returncode == 2 and "missing shard 2/4" in r.stderr

    dup = copy("dup")
    shutil.copytree(dup / "1", dup / "1b")
    with pytest.raises(MergeError, match="duplicated shards 1/4"):
        merge([dup])

    seed = copy("seed")
    edit(seed / "3" / "results.json", lambda res: res["config"].update(seed=4))
    with pytest.raises(MergeError, match=r"(?s)missing shard 3/4.*differ in.*config\.seed: 3 vs 4"):
        merge([seed])

    other_model = copy("model")
    edit(other_model / "0" / "results.json", lambda res: res["models"][0].update(fingerprint="0" * 16))
    with pytest.raises(MergeError, match="(?s)differ in.*models"):
        merge([other_model / str(i) for i in range(4)])

    other_scorer = copy("scorer")
    edit(other_scorer / "1" / "results.json", lambda res: res["scorers"]["counter"].update(fingerprint="f" * 16))
    with pytest.raises(MergeError, match="scorer fingerprints.counter"):
        merge([other_scorer])

    other_samples = copy("samples")  # the tables no longer hold the block's samples
    p = other_samples / "1" / "counting" / "samples.parquet"
    pd.read_parquet(p).iloc[::-1].to_parquet(p, index=False)
    with pytest.raises(MergeError, match="holds other samples than block 1/4"):
        merge([other_samples], out=tmp_path / "never")

    with pytest.raises(MergeError, match="whole run, not a shard"):
        merge([runs["whole"], *(runs["sweep"] / str(i) for i in range(4))])


# --- launchers ----------------------------------------------------------------------------------------


def _launcher(overrides: list[str]):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            return compose("config", overrides=overrides, return_hydra_config=True).hydra.launcher
    finally:
        GlobalHydra.instance().clear()


def test_joblib_is_the_default_launcher():
    launcher = _launcher([])
    assert launcher._target_.endswith("JoblibLauncher") and launcher.n_jobs == -1 and launcher.prefer == "processes"
    assert _launcher(["hydra.launcher.n_jobs=4"]).n_jobs == 4


def test_slurm_launcher_composes_into_the_sbatch_script(tmp_path, monkeypatch):
    """No SLURM here: the config is composed and turned into the sbatch script the way the submitit
    launcher does it (submitit only checks that `srun` exists)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install 'nbeval[slurm]'")
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    ours = _launcher(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=1", f"hydra.sweep.dir={tmp_path}", "hydra.job.name=nbeval"])
    assert ours._target_.endswith("SlurmLauncher")
    assert _launcher(["hydra/launcher=submitit_slurm"])._target_.endswith("SlurmLauncher")  # the plugin's own
    (tmp_path / "srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{__import__('os').environ['PATH']}")
    params = OmegaConf.to_container(ours, resolve=True)
    params.pop("_target_")
    executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"), slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python -u -m submitit.core._submit x", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=4", "#SBATCH --mem=16GB",
                 "#SBATCH --time=120", "#SBATCH --job-name=nbeval", "export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}"):
        assert line in script.splitlines(), line


def test_ray_launcher_composes(monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="pip install 'nbeval[ray]'")
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    launcher = _launcher(["hydra/launcher=ray_cluster", "hydra.launcher.ray.remote.num_gpus=1"])
    assert launcher._target_.endswith("RayLauncher")
    assert launcher.ray.init.address == "ray://head:10001" and launcher.ray.remote.num_gpus == 1
