"""`nbeval` command line. `run` is a Hydra app (overrides, `-m` multirun, `--help`, `--cfg job`);
the other commands are small argparse front ends over the same configs."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

USAGE = """usage: nbeval <command> [args]

commands:
  run       evaluate a model on suites; Hydra overrides, e.g.
              nbeval run model=oracle suite=[text_rendering,counting] n=200 seed=0
              nbeval run -m model=oracle,oracle_blur suite=counting      (multirun, joblib launcher)
              nbeval run suite=arena model=[reference,reference_noplan]  (models against each other:
                                         an automatic judge, judge=suite|clip; ratings with CIs)
            `nbeval run --help` lists every config group and option.
  report    tonight's run against its baseline: paired tests, verdicts, flips, plots → HTML + Markdown;
              nbeval report run=latest baseline="tags.nbeval.baseline='true'"   (exit 0 ok, 1 regressed, 2 not comparable)
  baseline  nbeval baseline set <run id|latest>   (promote a run to baseline)
  samples   write a suite's samples (ids, prompts) as JSONL, to generate images elsewhere:
              nbeval samples suite=[text_rendering] n=200 seed=0 --out prompts.jsonl
  arena     ratings from a battles file, and the blind voting web app (`nbeval arena --help`):
              nbeval arena leaderboard battles=<file.parquet|.jsonl|.csv> [out=DIR] [anchor=MODEL] …
              NBEVAL_ARENA_ADMIN_KEY=… nbeval arena serve [db=sqlite:///arena.db] [port=8000]
  serve     a model as an OpenAI-compatible images API (/v1/images/generations, /v1/images/edits):
              NBEVAL_API_KEY=… nbeval serve model=reference [host=127.0.0.1] [port=8000] [max_batch=1]
              nbeval run model=openai_http model.base_url=http://127.0.0.1:8000/v1 suite=[counting]
  merge     assemble the shards of a sharded run into one run (same tables, metrics and CIs as unsharded):
              nbeval run -m suite.shard=0/4,1/4,2/4,3/4 suite=[counting] hydra.sweep.dir=multirun/c4
              nbeval merge multirun/c4 [out=DIR] [cache_dir=DIR] [mlflow=false]      (`nbeval merge --help`)
  list      registered suites and the model, suite, scorer, judge and tracking configs
  cache     cache statistics: nbeval cache stats [--dir DIR]
  sync      upload the runs kept locally while the tracking server was down (folders marked PENDING_SYNC):
              nbeval sync [DIR…] [--uri URI] [--dry-run]      (default: ./outputs and ./multirun)

Tracking goes where MLFLOW_TRACKING_URI points (default sqlite:///mlflow.db), or a team's
MLflow server: MLFLOW_TRACKING_URI=http://host:5000 (README: "Shared tracking");
then: mlflow ui --backend-store-uri sqlite:///mlflow.db
"""

CONFIG_MODULE = "nbeval.conf"
log = logging.getLogger("nbeval")


def _check_models(name: str, suite, models: list) -> None:
    """A contest suite (the arena) needs two or more models, every other suite exactly one, and
    each model the capabilities the suite needs."""
    from nbeval.suite import ContestSuite

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


def evaluate(cfg, out_dir: Path, parent_run_id: str | None = None, extra_tags: dict | None = None, models: dict | None = None) -> dict:
    """Run one job: the configured model on every configured suite, or, given `models` (config
    option → model config, from `model=[a,b]`), those models on contest suites such as the arena.
    Returns results.json's content."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from nbeval.cache import Cache
    from nbeval.registry import load
    from nbeval.results import build_results, summary_markdown, write_run
    from nbeval.runner import score_suite
    from nbeval.sharding import parse_shard, suite_configs
    from nbeval.suite import ContestSuite

    shard = parse_shard(cfg.suite.get("shard"), cfg.n)  # `suite.shard=i/k`: this job's block of every suite's samples
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    if models:  # cfg.model is Hydra's merge of the listed configs: record each model's own instead
        container.pop("model", None)
        container["models"] = {k: OmegaConf.to_container(m, resolve=True) for k, m in models.items()}
    adapters = [instantiate(m) for m in (models.values() if models else [cfg.model])]
    suites = {}
    for name, scfg in suite_configs(cfg.suite).items():
        suites[name] = instantiate(scfg) if "_target_" in scfg else load(name)(**scfg)
        _check_models(name, suites[name], adapters)
        if shard and isinstance(suites[name], ContestSuite):
            raise ValueError(f"suite {name!r} compares models and cannot be sharded (suite.shard={shard[0]}/{shard[1]}); run it whole")
    scorers: dict = {}

    def scorer_for(role: str):
        if role not in scorers:
            if role not in cfg.scorer:
                raise KeyError(f"a suite needs scorer {role!r}, but the config has none (scorer={list(cfg.scorer)})")
            scorers[role] = instantiate(cfg.scorer[role])
        return scorers[role]

    cache = Cache(cfg.cache_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = [
        s.contest(adapters, scorer_for, cache, cfg.n, cfg.seed, cfg.batch_size) if isinstance(s, ContestSuite)
        else score_suite(s, adapters[0], scorer_for, cache, cfg.n, cfg.seed, cfg.batch_size, shard)
        for s in suites.values()
    ]
    res = build_results(container, adapters, scorers, results, out_dir)
    if shard:  # a part of a run: `nbeval merge` assembles the parts (and reuses the run's tags for the whole)
        res["shard"] = {"index": shard[0], "count": shard[1], "spec": f"{shard[0]}/{shard[1]}", "tags": dict(extra_tags or {})}
        extra_tags = {**(extra_tags or {}), "nbeval.kind": "shard", "nbeval.shard": res["shard"]["spec"]}
    write_run(res, results, cache, out_dir)
    print(summary_markdown(res, suites), flush=True)
    for r in results:
        if r.n_failed_generations or r.n_failed_scores:
            log.warning("%s: %d failed generations, %d failed scores (see the tables' error column)", r.suite.name, r.n_failed_generations, r.n_failed_scores)
    if cfg.get("tracking"):
        tracker = instantiate(cfg.tracking)
        run_id = tracker.log_or_keep(res, results, out_dir, parent_run_id=parent_run_id, tags=extra_tags)
        if run_id:
            res["mlflow_run_id"] = run_id
            (out_dir / "results.json").write_text(json.dumps(res, indent=2, default=str))
            print(f"MLflow run {run_id} at {tracker.target()}", flush=True)
        else:  # the store is down: the run is complete here, marked PENDING_SYNC; exit 0, the evaluation succeeded
            print(f"MLflow: not logged ({tracker.target()} failed; see the warning); the run is kept for: nbeval sync {out_dir}", flush=True)
    print(f"run folder: {out_dir}", flush=True)
    return res


def _listed_models(task_overrides: list[str]) -> dict:
    """For `model=[a,b,…]` (models compared in one run, as the arena does): config option → that
    model's config, composed as if the run named it alone (the run's overrides with `model=<it>`),
    so per-model overrides such as model.severity=2 apply to each; Hydra itself would merge the
    listed configs into one `model`. Empty when the run names one model."""
    from hydra import compose
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(task_overrides)
    listed = next((o for o in parsed if o.key_or_group == "model" and o.package is None and isinstance(o.value(), list)), None)
    if listed is None:
        return {}
    rest = [o.input_line for o in parsed if o is not listed]
    return {str(m): compose("config", overrides=[*rest, f"model={m}"]).model for m in listed.value()}


def _run_app() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from nbeval.tracking import PARENT_RUN_FILE

    @hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name="config")
    def app(cfg) -> None:
        hc = HydraConfig.get()
        parent = None
        if hc.mode == RunMode.MULTIRUN:
            f = Path(hc.sweep.dir) / PARENT_RUN_FILE
            parent = f.read_text().strip() if f.exists() else None
        tags = {f"nbeval.choice.{k}": str(v) for k, v in hc.runtime.choices.items() if not k.startswith("hydra")}
        if hc.mode == RunMode.MULTIRUN:  # `nbeval sync` nests a job under a parent it makes later (the store was down)
            tags["nbeval.sweep_dir"] = str(Path(hc.sweep.dir).resolve())
        tags["nbeval.config"] = hc.job.config_name  # config or a preset such as nightly: report history compares like with like
        models = _listed_models(list(hc.overrides.task))
        if models:
            tags["nbeval.choice.model"] = ",".join(models)
        evaluate(cfg, Path(hc.runtime.output_dir), parent, tags, models)

    app()


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return compose("config", overrides=overrides)


def _samples_cmd(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="nbeval samples", description="Write the samples of the configured suites as JSONL (one object per line: id, suite, prompt, turns, seed, tags; truth with --truth).")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. suite=[counting] n=100 seed=0")
    p.add_argument("--out", required=True, help="output .jsonl file")
    p.add_argument("--truth", action="store_true", help="include the ground truth (do not give it to the model under test)")
    args = p.parse_args(argv)
    from hydra.utils import instantiate

    from nbeval.runner import shard_block
    from nbeval.sharding import parse_shard, suite_configs

    cfg = _compose(args.overrides)
    n_written = 0
    shard = parse_shard(cfg.suite.get("shard"), cfg.n)
    with open(args.out, "w") as f:
        for scfg in suite_configs(cfg.suite).values():
            samples = instantiate(scfg).samples(cfg.n, cfg.seed)
            for s in samples[shard_block(len(samples), *shard, unit=cfg.batch_size)] if shard else samples:
                row = {"id": s.id, "suite": s.suite, "prompt": s.prompt, "turns": list(s.turns), "seed": s.seed, "tags": s.tags}
                if args.truth:
                    row["truth"] = list(s.truth)
                f.write(json.dumps(row) + "\n")
                n_written += 1
    print(f"wrote {n_written} samples to {args.out}")


def _list_cmd(argv: list[str]) -> None:
    from importlib.resources import files

    from nbeval.registry import available

    print("suites (entry points, group nbeval.suites):")
    for name, target in sorted(available().items()):
        print(f"  {name:20s} {target}")
    root = files(CONFIG_MODULE)
    for group in ("model", "suite", "scorer", "judge", "tracking"):
        names = sorted(p.name[:-5] for p in root.joinpath(group).iterdir() if p.name.endswith(".yaml"))
        print(f"{group} configs: {', '.join(names)}")


def _cache_cmd(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="nbeval cache", description="Inspect the content-addressed cache.")
    p.add_argument("action", choices=["stats"])
    p.add_argument("--dir", default=None, help="cache folder (default: the config's cache_dir)")
    args = p.parse_args(argv)
    from nbeval.cache import Cache

    d = args.dir or _compose([]).cache_dir
    print(json.dumps({"cache_dir": str(d), **Cache(d).stats()}, indent=2))


ARENA_USAGE = """usage:
  nbeval arena leaderboard battles=FILE [out=DIR] [anchor=MODEL] [anchor_rating=1000] [rounds=100] [seed=0] [mlflow=true|false]
      ratings from a battles file (.parquet, .jsonl, .csv; ours or FastChat/LMArena's schema)
  nbeval arena serve [db=sqlite:///arena.db] [host=127.0.0.1] [port=8000] [votes_per_minute=600]
      the blind voting web app; db may be postgresql+psycopg://user@host/db. The admin key comes
      from the environment, NBEVAL_ARENA_ADMIN_KEY (16+ characters), never from the command line.
  nbeval arena create url=URL name=NAME [sampling=uncertainty|uniform] [image_size=256]
  nbeval arena import url=URL arena=ID suite=SUITE runs=RUN_DIR[,RUN_DIR…]
      put the first-turn images of finished `nbeval run` folders (one per model) into an arena
  nbeval arena invite url=URL arena=ID names=alice,bob     (prints each voter's invite token once)
  nbeval arena export url=URL arena=ID [out=votes.jsonl]   (then: nbeval arena leaderboard battles=votes.jsonl)
      the admin commands talk to a running server with NBEVAL_ARENA_ADMIN_KEY."""


def _options(argv: list[str], allowed: set[str], required: set[str] = frozenset(), usage: str = ARENA_USAGE) -> dict[str, str]:
    """key=value arguments of a subcommand; exits with the usage on anything else."""
    bad = [a for a in argv if "=" not in a]
    opts = dict(a.split("=", 1) for a in argv if "=" in a)
    unknown, missing = set(opts) - allowed, required - set(opts)
    if bad or unknown or missing:
        why = f"not key=value: {bad}" if bad else f"unknown options {', '.join(sorted(unknown))}" if unknown else f"{', '.join(sorted(missing))}= is required"
        print(f"nbeval: {why}\n{usage}", file=sys.stderr)
        sys.exit(2)
    return opts


def _arena_leaderboard(argv: list[str]) -> None:
    opts = _options(argv, {"battles", "out", "anchor", "anchor_rating", "rounds", "seed", "mlflow"}, {"battles"})
    from nbeval.arena.publish import log_to_mlflow, plot_ratings
    from nbeval.arena.ratings import leaderboard, read_battles
    from nbeval.plots import plt

    battles = read_battles(opts["battles"])
    board = leaderboard(battles, int(opts.get("rounds", 100)), int(opts.get("seed", 0)), opts.get("anchor"), float(opts.get("anchor_rating", 1000)))
    out = Path(opts.get("out", "arena_leaderboard"))
    out.mkdir(parents=True, exist_ok=True)
    board.to_csv(out / "leaderboard.csv", index=False)
    (out / "leaderboard.json").write_text(board.to_json(orient="records", indent=2))
    fig = plot_ratings(board)
    fig.savefig(out / "ratings.png", dpi=100)
    plt.close(fig)
    print(board.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    print(f"{len(battles)} battles, {len(board)} models; 95% CIs from {opts.get('rounds', 100)} bootstrap rounds; written to {out}/ (leaderboard.csv, .json, ratings.png)")
    if opts.get("mlflow", "true").lower() not in ("false", "0", "no"):
        run_id = log_to_mlflow(board, battles, opts, out)
        print(f"MLflow run {run_id} (experiment nbeval-arena)")


def _arena_serve(argv: list[str]) -> None:
    import os

    import uvicorn

    from nbeval.arena.web import ServerConfig, create_app

    opts = _options(argv, {"db", "host", "port", "votes_per_minute", "logins_per_minute"})
    config = ServerConfig(
        db_url=opts.get("db", "sqlite:///arena.db"),
        admin_key=os.environ.get("NBEVAL_ARENA_ADMIN_KEY", ""),
        votes_per_minute=int(opts.get("votes_per_minute", 600)),
        logins_per_minute=int(opts.get("logins_per_minute", 30)),
    )
    try:
        app = create_app(config)
    except ValueError as e:
        print(f"nbeval arena serve: {e}", file=sys.stderr)
        sys.exit(2)
    uvicorn.run(app, host=opts.get("host", "127.0.0.1"), port=int(opts.get("port", 8000)), server_header=False, log_level="warning")


def _arena_admin(action: str, argv: list[str]) -> None:
    """create / import / invite / export against a running server, as its admin."""
    import os

    import httpx

    from nbeval.arena.client import AdminClient, generations_from_run

    allowed = {"create": {"url", "name", "sampling", "image_size"}, "import": {"url", "arena", "suite", "runs"},
               "invite": {"url", "arena", "names"}, "export": {"url", "arena", "out"}}[action]
    opts = _options(argv, allowed, allowed & {"url", "name", "arena", "suite", "runs", "names"})
    admin = AdminClient(opts["url"], os.environ.get("NBEVAL_ARENA_ADMIN_KEY", ""))
    try:
        if action == "create":
            print(admin.create_arena(opts["name"], opts.get("sampling", "uncertainty"), int(opts.get("image_size", 256))))
        elif action == "import":
            items = [g for run in opts["runs"].split(",") for g in generations_from_run(Path(run), opts["suite"])]
            print(json.dumps({"generations": len(items), **admin.import_generations(opts["arena"], items)}))
        elif action == "invite":
            for name, token in admin.invite(opts["arena"], opts["names"].split(",")).items():
                print(f"{name}\t{token}")
        else:
            out = Path(opts.get("out", "votes.jsonl"))
            out.write_text(admin.votes_jsonl(opts["arena"]))
            print(f"wrote {sum(1 for _ in out.open())} votes to {out}")
    except (RuntimeError, FileNotFoundError, httpx.TransportError) as e:
        print(f"nbeval arena {action}: {e}", file=sys.stderr)
        sys.exit(1)


def _arena_cmd(argv: list[str]) -> None:
    subcommands = {"leaderboard": _arena_leaderboard, "serve": _arena_serve,
                   **{a: lambda rest, a=a: _arena_admin(a, rest) for a in ("create", "import", "invite", "export")}}
    if not argv or argv[0] not in subcommands:
        print(ARENA_USAGE, file=sys.stderr if argv[:1] not in (["-h"], ["--help"]) else sys.stdout)
        sys.exit(0 if argv[:1] in (["-h"], ["--help"]) else 2)
    subcommands[argv[0]](argv[1:])


def _tracking_uri() -> str:
    import os

    return os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")


REPORT_USAGE = """usage: nbeval report run=<run id|latest> baseline=<run id|MLflow filter> [out=reports/out] [alpha=0.05]
                     [history=30] [experiment=nbeval] [screenshot=auto|true|false]
  e.g. nbeval report run=latest baseline="tags.nbeval.baseline='true'"
  Writes <out>/<run id>/index.html and summary.md, logs them (and a browser screenshot) to the run.
  Exit code: 0 no significant regression, 1 a significant regression, 2 the runs could not be compared."""


def _report_cmd(argv: list[str]) -> None:
    if argv[:1] in (["-h"], ["--help"]):
        print(REPORT_USAGE)
        sys.exit(0)
    from nbeval.report.build import build_report
    from nbeval.report.load import ReportError

    opts = _options(argv, {"run", "baseline", "out", "alpha", "history", "experiment", "screenshot"}, {"run", "baseline"}, REPORT_USAGE)
    try:
        status, out = build_report(opts["run"], opts["baseline"], Path(opts.get("out", "reports/out")), _tracking_uri(), opts.get("experiment", "nbeval"),
                                   float(opts.get("alpha", 0.05)), int(opts.get("history", 30)), opts.get("screenshot", "auto"))
    except ReportError as e:
        print(f"nbeval report: {e}", file=sys.stderr)
        sys.exit(2)
    print((out / "summary.md").read_text())
    print(f"report: {out / 'index.html'}")
    sys.exit(status)


def _baseline_cmd(argv: list[str]) -> None:
    usage = "usage: nbeval baseline set <run id|latest> [experiment=nbeval]   (tags it nbeval.baseline=true)"
    if len(argv) < 2 or argv[0] != "set":
        print(usage, file=sys.stderr)
        sys.exit(2)
    import mlflow

    from nbeval.report.load import ReportError, experiment_ids, resolve_run

    opts = _options(argv[2:], {"experiment"}, usage=usage)
    client = mlflow.MlflowClient(_tracking_uri())
    try:
        run_id = resolve_run(client, experiment_ids(client, opts.get("experiment", "nbeval")), argv[1])
        client.set_tag(run_id, "nbeval.baseline", "true")
    except (ReportError, mlflow.exceptions.MlflowException) as e:
        print(f"nbeval baseline: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"run {run_id} is now a baseline (tags.nbeval.baseline='true'); reports pick the newest such run before theirs")


COMMANDS = {"report": _report_cmd, "baseline": _baseline_cmd, "samples": _samples_cmd, "list": _list_cmd, "cache": _cache_cmd, "arena": _arena_cmd}
MODULE_COMMANDS = {"serve": "nbeval.serve", "merge": "nbeval.sharding", "sync": "nbeval.sync"}  # each module's main(argv), imported on use


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help", "help"):
        print(USAGE)
        sys.exit(0 if len(sys.argv) >= 2 else 2)
    cmd, rest = sys.argv[1], sys.argv[2:]
    if cmd == "run":
        sys.argv = ["nbeval run", *rest]
        _run_app()
    elif cmd in COMMANDS:
        COMMANDS[cmd](rest)
    elif cmd in MODULE_COMMANDS:
        import importlib

        importlib.import_module(MODULE_COMMANDS[cmd]).main(rest)
    else:
        print(f"nbeval: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
