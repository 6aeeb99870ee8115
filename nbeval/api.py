"""The one orchestrator. `evaluate(cfg)` runs a configured job and returns its `Run`; `finalize(run,
out_dir, tracker)` writes its folder (tables, results.json once, summary, figures) and tracks it;
`run_job(cfg, out_dir)` is both, as `nbeval run` does them (the tracker made ready meanwhile).
`nbeval run`, `nbeval merge` (a Run assembled from shards), `nbeval serve`, `nbeval samples` and
the tests all come through here; the CLI only parses.

    from nbeval import api
    cfg = api.compose(["model=oracle", "suite=[counting]", "n=50"])
    run = api.evaluate(cfg)
    res = api.finalize(run, Path("out"), api.make_tracker(cfg.tracking))   # results.json's content
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from nbeval.adapters.base import ModelAdapter
from nbeval.cache import Cache
from nbeval.readings import name_of
from nbeval.results import Run, build_results, find_card, model_record, summary_markdown, write_run
from nbeval.runner import parse_shard, score_suite
from nbeval.scorers.base import Scorer
from nbeval.suite import ContestSuite, RunContext, Suite

CONFIG_MODULE = "nbeval.conf"
SHARD_KEY = "shard"  # `suite.shard=i/k`: a run setting under the suite group (a documented command line), not a suite
log = logging.getLogger("nbeval")


# --- configs ------------------------------------------------------------------------------------------


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """The config `nbeval run <overrides>` runs (or a preset's: `config_name`), outside a Hydra app too
    (tests, `nbeval serve`, `nbeval samples`, `nbeval scorer-card`), with `model=[a,b]` resolved into
    `models` as the run resolves it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    overrides = list(overrides)
    if GlobalHydra.instance().is_initialized():
        return with_listed_models(hydra_compose(config_name, overrides=overrides), overrides, config_name)
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return with_listed_models(hydra_compose(config_name, overrides=overrides), overrides, config_name)


def with_listed_models(cfg: DictConfig, overrides: Sequence[str], config_name: str = "config") -> DictConfig:
    """For `model=[a,b,…]` (models compared in one run, as the arena does) the config gains `models`:
    config option → that model's config, composed as if the run named it alone (the run's overrides
    with `model=<it>`), so per-model overrides such as model.severity=2 apply to each; Hydra itself
    merges the listed configs into one `model`. Unchanged when the run names one model."""
    from hydra import compose as hydra_compose
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    listed = next((o for o in parsed if o.key_or_group == "model" and o.package is None and isinstance(o.value(), list)), None)
    if listed is None:
        return cfg
    rest = [o.input_line for o in parsed if o is not listed]
    models = {str(m): hydra_compose(config_name, overrides=[*rest, f"model={m}"]).model for m in listed.value()}
    with open_dict(cfg):
        cfg.models = models
    return cfg


def suite_configs(suite_cfg: Mapping) -> dict:
    """The run's suites: the `suite` node without the run-level `shard` setting."""
    return {name: scfg for name, scfg in suite_cfg.items() if name != SHARD_KEY}


def build_suite(name: str, node: Mapping) -> Suite:
    """Suite `name` from its config node (`_target_`, or a registered suite's class by name). It is
    named by its config key, whatever its parameters say."""
    from hydra.utils import instantiate

    from nbeval.registry import load

    suite = instantiate(node) if "_target_" in node else load(name)(**node)
    suite.name = name
    return suite


def configured_suite(name: str, params: Mapping | None = None) -> Suite:
    """Suite `name` as `conf/suite/<name>.yaml` builds it, `params` over its settings (a registered
    suite without a config: its class defaults); what a contest's base suite is, so its samples,
    images and readings are those of a run of that suite."""
    from hydra.errors import MissingConfigException

    try:
        node = compose([f"suite=[{name}]"]).suite[name]
    except MissingConfigException:
        node = OmegaConf.create({})
    return build_suite(name, OmegaConf.merge(node, dict(params or {})))


def build_suites(cfg: DictConfig) -> dict[str, Suite]:
    return {name: build_suite(name, node) for name, node in suite_configs(cfg.suite).items()}


def make_tracker(node: Mapping | None):
    """The tracker a `tracking` config builds; none configured (`tracking=none`, or an empty node of
    an older run folder) is the NullTracker."""
    from hydra.utils import instantiate

    from nbeval.tracking import NullTracker

    return instantiate(node) if node and "_target_" in node else NullTracker()


# --- a run --------------------------------------------------------------------------------------------


class Scorers:
    """The run's scorers by role (`scorer_for(role)`), each built on first use, so a suite that is
    not run never loads its weights."""

    def __init__(self, config: Mapping) -> None:
        self.config, self.built = config, {}

    def __call__(self, role: str) -> Scorer:
        from hydra.utils import instantiate

        if role not in self.built:
            if role not in self.config:
                raise KeyError(f"a suite needs scorer {role!r}, but the config has none (scorer={list(self.config)})")
            self.built[role] = instantiate(self.config[role])
        return self.built[role]

    def check(self, suites: Mapping[str, Suite]) -> None:
        """Before any work: a suite's optional roles that the run configures join its required ones
        (`Suite.use_scorers`), every role it reads with is configured, and its scorer gives the
        reading that suite expects (nbeval.readings) — a detector counter must give CounterReading."""
        from hydra.utils import get_class

        for name, suite in suites.items():
            suite.use_scorers(set(self.config))
            for role, expected in suite.scorers.items():
                if role not in self.config:
                    raise KeyError(f"suite {name!r} reads with scorer {role!r}, but the config has none (scorer={list(self.config)})")
                given = get_class(self.config[role]["_target_"]).reading
                if expected is not dict and given is not expected:
                    raise TypeError(f"suite {name!r} expects {name_of(expected)} of its {role!r} scorer, but "
                                    f"{self.config[role]['_target_']} gives {name_of(given)}")

    def cards(self, cache_dir: str) -> dict[str, dict]:
        """Each scorer's card, fingerprint and scorer card (`nbeval scorer-card`; None: unvalidated)."""
        return {role: {**s.card(), "fingerprint": s.fingerprint, "scorer_card": find_card(cache_dir, s.fingerprint)} for role, s in self.built.items()}


def _check_models(name: str, suite: Suite, models: list[ModelAdapter]) -> None:
    """A contest suite (the arena) needs two or more models, every other suite exactly one, and
    each model the capabilities the suite needs."""
    names = [m.name for m in models]
    if isinstance(suite, ContestSuite) and len(models) < 2:
        raise ValueError(f"suite {name!r} compares models, but the run has one ({names[0]}): name two or more, e.g. model=[reference,reference_noplan]")
    if not isinstance(suite, ContestSuite) and len(models) > 1:
        raise ValueError(f"suite {name!r} scores one model at a time, but the run has {len(models)} (model=[{','.join(names)}]); "
                         f"for one run per model use a sweep: nbeval run -m model={','.join(names)}")
    for model in models:
        missing = suite.capabilities - model.capabilities
        if missing:
            raise ValueError(f"suite {name!r} needs model capabilities {sorted(missing)} that {model.name!r} lacks")


def evaluate(cfg: DictConfig, tags: Mapping[str, str] | None = None) -> Run:
    """Run one job: the configured model on every configured suite, or the models listed with
    `model=[a,b]` (`cfg.models`) on contest suites such as the arena; `suite.shard=i/k` runs block
    i of k of every suite's samples. Everything is checked before the first image is made."""
    from hydra.utils import instantiate

    shard = parse_shard(cfg.suite.get(SHARD_KEY), cfg.n)
    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("hydra", None)
    listed = cfg.get("models")
    if listed:  # cfg.model is Hydra's merge of the listed configs: the record keeps each model's own
        config.pop("model", None)
    suites = build_suites(cfg)
    scorers = Scorers(cfg.scorer)
    scorers.check(suites)
    adapters = [instantiate(m) for m in (listed.values() if listed else [cfg.model])]
    for name, suite in suites.items():
        _check_models(name, suite, adapters)
        if shard and isinstance(suite, ContestSuite):
            raise ValueError(f"suite {name!r} compares models and cannot be sharded (suite.shard={shard[0]}/{shard[1]}); run it whole")
    cache = Cache(cfg.cache_dir)
    context = RunContext(scorers, cache, cfg.n, cfg.seed, cfg.batch_size,
                         lambda suite, model: score_suite(suite, model, scorers, cache, cfg.n, cfg.seed, cfg.batch_size))
    results = [
        suite.contest(adapters, context) if isinstance(suite, ContestSuite)
        else score_suite(suite, adapters[0], scorers, cache, cfg.n, cfg.seed, cfg.batch_size, shard)
        for suite in suites.values()
    ]
    return Run(config, [model_record(m) for m in adapters], scorers.cards(cfg.cache_dir), results, shard, dict(tags or {}))


def run_job(cfg: DictConfig, out_dir: Path, tags: Mapping[str, str] | None = None, parent_run_id: str | None = None) -> dict:
    """`nbeval run`'s job: `evaluate`, then `finalize` into `out_dir`, with the tracker made ready
    while the run works (MLflow's imports in a process of their own: a run with every image and
    reading cached takes about as long as they do). Returns results.json's content."""
    tracker = make_tracker(cfg.tracking)
    with tracker.ready_in_background():
        return finalize(evaluate(cfg, tags), out_dir, tracker, parent_run_id)


def finalize(run: Run, out_dir: Path, tracker, parent_run_id: str | None = None) -> dict:
    """Write the run's folder — tables, results.json (once), summary.md, sample grids and plots —
    print its summary, and track it (`tracker.log_or_keep`: a store that is down keeps the run for
    `nbeval sync`). Returns results.json's content."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    res = build_results(run, out_dir)
    write_run(res, run.results, Cache(run.config["cache_dir"]), out_dir)
    print(summary_markdown(res, run.suites), flush=True)
    for r in run.results:
        if r.n_failed_generations or r.n_failed_scores:
            log.warning("%s: %d failed generations, %d failed scores (see the tables' error column)", r.suite.name, r.n_failed_generations, r.n_failed_scores)
    tags = dict(run.tags)
    if run.shard:
        tags |= {"nbeval.kind": "shard", "nbeval.shard": res["shard"]["spec"]}
    if tracker.active:
        run_id = tracker.log_or_keep(res, out_dir, parent_run_id=parent_run_id, tags=tags)
        if run_id:
            res["mlflow_run_id"] = run_id
            print(f"MLflow run {run_id} at {tracker.target()}", flush=True)
        else:  # the store is down: the run is complete here, marked PENDING_SYNC; the evaluation succeeded
            print(f"MLflow: not logged ({tracker.target()} failed; see the warning); the run is kept for: nbeval sync {out_dir}", flush=True)
    print(f"run folder: {out_dir}", flush=True)
    return res
