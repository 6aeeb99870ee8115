"""`nbeval` command line: parsing only. `run` is a Hydra app (overrides, `-m` multirun, `--help`,
`--cfg job`) over `api.evaluate` / `api.finalize`; the other commands are small front ends over the
same configs and modules, with one key=value parser (`parse_options`)."""

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
  scorer-card  how right a scorer or judge is, on images whose truth is exact (`nbeval scorer-card --help`):
              nbeval scorer-card scorer=[vlm_count] vlm=world n=100
  list      registered suites and the model, suite, scorer, judge, vlm and tracking configs
  cache     cache statistics: nbeval cache stats [--dir DIR]
  sync      upload the runs kept locally while the tracking server was down (folders marked PENDING_SYNC):
              nbeval sync [DIR…] [--uri URI] [--dry-run]      (default: ./outputs and ./multirun)

Tracking goes where MLFLOW_TRACKING_URI points (default sqlite:///mlflow.db), or a team's
MLflow server: MLFLOW_TRACKING_URI=http://host:5000 (README: "Shared tracking");
then: mlflow ui --backend-store-uri sqlite:///mlflow.db
"""

log = logging.getLogger("nbeval")


def parse_options(argv: list[str], allowed: set[str], required: set[str] = frozenset(), usage: str = "",
                  positional: bool = False, overrides: bool = False) -> tuple[dict[str, str], list[str]]:
    """A subcommand's key=value options → (options, the rest). The rest is the arguments without
    `=` when `positional`, or the key=value pairs not in `allowed` (Hydra overrides) when
    `overrides`; anything else, or a missing required option, exits 2 with the usage."""
    opts: dict[str, str] = {}
    rest, bad = [], []
    for a in argv:
        key = a.split("=", 1)[0]
        if "=" in a and key in allowed:
            opts[key] = a.split("=", 1)[1]
        elif ("=" not in a and positional) or ("=" in a and overrides):
            rest.append(a)
        else:
            bad.append(a)
    missing = required - set(opts)
    if bad or missing:
        why = (f"unknown options {', '.join(sorted(a.split('=', 1)[0] for a in bad))}" if all("=" in a for a in bad) else f"not key=value: {bad}") if bad \
            else f"{', '.join(sorted(missing))}= is required"
        print(f"nbeval: {why}\n{usage}", file=sys.stderr)
        sys.exit(2)
    return opts, rest


def _is_true(value: str) -> bool:
    return value.lower() not in ("false", "0", "no")


def _run_app() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from nbeval import api
    from nbeval.tracking import PARENT_RUN_FILE

    @hydra.main(version_base="1.3", config_path=f"pkg://{api.CONFIG_MODULE}", config_name="config")
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
        cfg = api.with_listed_models(cfg, list(hc.overrides.task), hc.job.config_name)
        if cfg.get("models"):
            tags["nbeval.choice.model"] = ",".join(cfg.models)
        api.run_job(cfg, Path(hc.runtime.output_dir), tags, parent)

    app()


def _samples_cmd(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="nbeval samples", description="Write the samples of the configured suites as JSONL (one object per line: id, suite, prompt, turns, seed, tags; truth with --truth).")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. suite=[counting] n=100 seed=0")
    p.add_argument("--out", required=True, help="output .jsonl file")
    p.add_argument("--truth", action="store_true", help="include the ground truth (do not give it to the model under test)")
    args = p.parse_args(argv)
    from nbeval import api
    from nbeval.runner import parse_shard, shard_samples

    cfg = api.compose(args.overrides)
    n_written = 0
    shard = parse_shard(cfg.suite.get(api.SHARD_KEY), cfg.n)
    with open(args.out, "w") as f:
        for suite in api.build_suites(cfg).values():
            for s in shard_samples(suite, cfg.n, cfg.seed, cfg.batch_size, shard)[0]:
                row = {"id": s.id, "suite": s.suite, "prompt": s.prompt, "turns": list(s.turns), "seed": s.seed, "tags": s.tags}
                if args.truth:
                    row["truth"] = list(s.truth)
                f.write(json.dumps(row) + "\n")
                n_written += 1
    print(f"wrote {n_written} samples to {args.out}")


def _list_cmd(argv: list[str]) -> None:
    from importlib.resources import files

    from nbeval.api import CONFIG_MODULE
    from nbeval.registry import available

    print("suites (entry points, group nbeval.suites):")
    for name, target in sorted(available().items()):
        print(f"  {name:20s} {target}")
    root = files(CONFIG_MODULE)
    for group in ("model", "suite", "scorer", "judge", "vlm", "tracking"):
        names = sorted(p.name[:-5] for p in root.joinpath(group).iterdir() if p.name.endswith(".yaml"))
        print(f"{group} configs: {', '.join(names)}")


def _cache_cmd(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="nbeval cache", description="Inspect the content-addressed cache.")
    p.add_argument("action", choices=["stats"])
    p.add_argument("--dir", default=None, help="cache folder (default: the config's cache_dir)")
    args = p.parse_args(argv)
    from nbeval.api import compose
    from nbeval.cache import Cache

    d = args.dir or compose([]).cache_dir
    print(json.dumps({"cache_dir": str(d), **Cache(d).stats()}, indent=2))


ARENA_USAGE = """usage:
  nbeval arena leaderboard battles=FILE [out=DIR] [anchor=MODEL] [anchor_rating=1000] [rounds=100] [seed=0] [mlflow=true|false]
                           [ci=bootstrap|sandwich] [weighting=none|inverse_frequency] [by=COLUMN]
      by=suite (or a column of tag lists): also one leaderboard per category, leaderboard_by_<column>.csv
      ratings from a battles file (.parquet, .jsonl, .csv; ours or FastChat/LMArena's schema)
  nbeval arena serve [db=sqlite:///arena.db] [host=127.0.0.1] [port=8000] [votes_per_minute=600]
                     [battle_ttl_s=900] [rerolls_per_minute=10] [admin_failures_per_minute=10] [max_import_mb=64] [undo_s=10]
                     [forwarded_allow_ips=ADDRESSES]
      the blind voting web app; db may be postgresql+psycopg://user@host/db. The admin key comes
      from the environment, NBEVAL_ARENA_ADMIN_KEY (16+ characters), never from the command line.
      X-Forwarded-For/-Proto are ignored unless forwarded_allow_ips names the proxy (e.g. 127.0.0.1).
  nbeval arena create url=URL name=NAME [sampling=uncertainty|uniform] [image_size=256] [reveal=after_vote|end|never] [aspect=refuse|crop]
  nbeval arena import url=URL arena=ID suite=SUITE runs=RUN_DIR[,RUN_DIR…]
      put the first-turn images of finished `nbeval run` folders (one per model) into an arena
  nbeval arena invite url=URL arena=ID names=alice,bob [expires_days=N]   (prints each voter's invite token once)
  nbeval arena revoke url=URL arena=ID names=alice        (ends their invites and sessions)
  nbeval arena export url=URL arena=ID [out=votes.jsonl]   (then: nbeval arena leaderboard battles=votes.jsonl)
      the admin commands talk to a running server with NBEVAL_ARENA_ADMIN_KEY."""


def _arena_leaderboard(argv: list[str]) -> None:
    opts, _ = parse_options(argv, {"battles", "out", "anchor", "anchor_rating", "rounds", "seed", "mlflow", "ci", "weighting", "by"}, {"battles"}, ARENA_USAGE)
    from nbeval.arena.publish import log_to_mlflow, plot_ratings
    from nbeval.arena.ratings import leaderboard, leaderboards_by, read_battles
    from nbeval.plots import plt

    battles = read_battles(opts["battles"])
    ci = opts.get("ci", "bootstrap")
    options = {"rounds": int(opts.get("rounds", 100)), "seed": int(opts.get("seed", 0)), "anchor": opts.get("anchor"),
               "anchor_rating": float(opts.get("anchor_rating", 1000)), "weighting": opts.get("weighting", "none"), "ci": ci}
    board = leaderboard(battles, **options)
    out = Path(opts.get("out", "arena_leaderboard"))
    out.mkdir(parents=True, exist_ok=True)
    board.to_csv(out / "leaderboard.csv", index=False)
    if "by" in opts:
        by = leaderboards_by(battles, opts["by"], **{**options, "anchor": None})  # mean-anchored: an anchor model may miss a category
        by.to_csv(out / f"leaderboard_by_{opts['by']}.csv", index=False)
        print(f"per {opts['by']}: {', '.join(map(str, by['category'].unique()))} (leaderboard_by_{opts['by']}.csv)")
    (out / "leaderboard.json").write_text(board.to_json(orient="records", indent=2))
    fig = plot_ratings(board)
    fig.savefig(out / "ratings.png", dpi=100)
    plt.close(fig)
    print(board.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    how = f"{opts.get('rounds', 100)} bootstrap rounds" if ci == "bootstrap" else "the sandwich covariance"
    print(f"{len(battles)} battles, {len(board)} models; 95% CIs from {how}; written to {out}/ (leaderboard.csv, .json, ratings.png)")
    if _is_true(opts.get("mlflow", "true")):
        run_id = log_to_mlflow(board, battles, opts, out)
        print(f"MLflow run {run_id} (experiment nbeval-arena)")


def _arena_serve(argv: list[str]) -> None:
    import os

    import uvicorn

    from nbeval.arena.web import ServerConfig, create_app

    numbers = {"votes_per_minute", "logins_per_minute", "battle_ttl_s", "rerolls_per_minute", "admin_failures_per_minute", "max_import_mb", "undo_s"}
    opts, _ = parse_options(argv, {"db", "host", "port", "forwarded_allow_ips", *numbers}, usage=ARENA_USAGE)
    config = ServerConfig(
        db_url=opts.get("db", "sqlite:///arena.db"),
        admin_key=os.environ.get("NBEVAL_ARENA_ADMIN_KEY", ""),
        **{k: int(opts[k]) for k in numbers & opts.keys()},
    )
    try:
        app = create_app(config)
    except ValueError as e:
        print(f"nbeval arena serve: {e}", file=sys.stderr)
        sys.exit(2)
    proxies = opts.get("forwarded_allow_ips")  # uvicorn would trust loopback's forwarded headers by default
    uvicorn.run(app, host=opts.get("host", "127.0.0.1"), port=int(opts.get("port", 8000)), server_header=False, log_level="warning",
                proxy_headers=bool(proxies), forwarded_allow_ips=proxies)


def _arena_admin(action: str, argv: list[str]) -> None:
    """create / import / invite / export against a running server, as its admin."""
    import os

    import httpx

    from nbeval.arena.client import AdminClient, generations_from_run

    allowed = {"create": {"url", "name", "sampling", "image_size", "reveal", "aspect"}, "import": {"url", "arena", "suite", "runs"},
               "invite": {"url", "arena", "names", "expires_days"}, "revoke": {"url", "arena", "names"}, "export": {"url", "arena", "out"}}[action]
    opts, _ = parse_options(argv, allowed, allowed & {"url", "name", "arena", "suite", "runs", "names"}, ARENA_USAGE)
    admin = AdminClient(opts["url"], os.environ.get("NBEVAL_ARENA_ADMIN_KEY", ""))
    try:
        if action == "create":
            print(admin.create_arena(opts["name"], opts.get("sampling", "uncertainty"), int(opts.get("image_size", 256)), opts.get("reveal", "after_vote"),
                                     opts.get("aspect", "refuse")))
        elif action == "import":
            items = [g for run in opts["runs"].split(",") for g in generations_from_run(Path(run), opts["suite"])]
            print(json.dumps({"generations": len(items), **admin.import_generations(opts["arena"], items)}))
        elif action == "invite":
            days = float(opts["expires_days"]) if "expires_days" in opts else None
            for name, token in admin.invite(opts["arena"], opts["names"].split(","), days).items():
                print(f"{name}\t{token}")
        elif action == "revoke":
            print(f"revoked {admin.revoke(opts['arena'], opts['names'].split(','))} voters")
        else:
            out = Path(opts.get("out", "votes.jsonl"))
            out.write_text(admin.votes_jsonl(opts["arena"]))
            print(f"wrote {sum(1 for _ in out.open())} votes to {out}")
    except (RuntimeError, FileNotFoundError, httpx.TransportError) as e:
        print(f"nbeval arena {action}: {e}", file=sys.stderr)
        sys.exit(1)


def _arena_cmd(argv: list[str]) -> None:
    subcommands = {"leaderboard": _arena_leaderboard, "serve": _arena_serve,
                   **{a: lambda rest, a=a: _arena_admin(a, rest) for a in ("create", "import", "invite", "revoke", "export")}}
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

    opts, _ = parse_options(argv, {"run", "baseline", "out", "alpha", "history", "experiment", "screenshot"}, {"run", "baseline"}, REPORT_USAGE)
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
    from nbeval.report.load import ReportError, experiment_ids, resolve_run
    from nbeval.tracking import import_mlflow

    mlflow = import_mlflow()
    opts, _ = parse_options(argv[2:], {"experiment"}, usage=usage)
    client = mlflow.MlflowClient(_tracking_uri())
    try:
        run_id = resolve_run(client, experiment_ids(client, opts.get("experiment", "nbeval")), argv[1])
        client.set_tag(run_id, "nbeval.baseline", "true")
    except (ReportError, mlflow.exceptions.MlflowException) as e:
        print(f"nbeval baseline: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"run {run_id} is now a baseline (tags.nbeval.baseline='true'); reports pick the newest such run before theirs")


SERVE_USAGE = """usage: nbeval serve model=<config> [model.<key>=… and other Hydra overrides]
       nbeval serve vlm=<config> [vlm.<key>=…] [logprobs=true|false]
                    [host=127.0.0.1] [port=8000] [max_batch=1] [batch_wait_ms=5] [max_queue=256]
                    [key_env=NBEVAL_API_KEY] [log_level=warning]   (uvicorn's own log)
model=…: the model as an OpenAI-compatible images API (POST /v1/images/generations, /v1/images/edits);
  then: nbeval run model=openai_http model.base_url=http://HOST:PORT/v1 model.model=<served name> …
vlm=…: the judge as OpenAI's chat completions (POST /v1/chat/completions, with logprobs unless
  logprobs=false: a text-only server); then: … scorer=[vlm_count] vlm=openai_chat vlm.base_url=http://HOST:PORT/v1 vlm.model=<name>
If the environment variable named by key_env is set, every request needs `Authorization: Bearer <it>`."""


def _serve_cmd(argv: list[str]) -> None:
    if argv[:1] in (["-h"], ["--help"]):
        print(SERVE_USAGE)
        return
    opts, overrides = parse_options(argv, {"host", "port", "max_batch", "batch_wait_ms", "max_queue", "key_env", "log_level", "logprobs"},
                                    usage=SERVE_USAGE, overrides=True)
    import os

    from hydra.utils import instantiate

    from nbeval.api import compose
    from nbeval.serve import DEFAULT_KEY_ENV, ServeConfig, create_app, create_judge_app, serve

    key_env = opts.get("key_env", DEFAULT_KEY_ENV)
    judge = any(o.split("=", 1)[0].lstrip("+~").split(".")[0] == "vlm" for o in overrides)
    try:
        config = ServeConfig(api_key=os.environ.get(key_env, ""), max_batch=int(opts.get("max_batch", 1)),
                             batch_wait_ms=float(opts.get("batch_wait_ms", 5)), max_queue=int(opts.get("max_queue", 256)))
        cfg = compose(overrides)
        served = instantiate(cfg.vlm if judge else cfg.model)
        app = create_judge_app(served, config, _is_true(opts.get("logprobs", "true"))) if judge else create_app(served, config)
    except Exception as e:  # noqa: BLE001 — a bad config is a message, not a traceback
        print(f"nbeval serve: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(2)
    log.info("serving %s %s (fingerprint %s) at http://%s:%s/v1 (key %s, max_batch %d)", "judge" if judge else "model", served.name,
             served.fingerprint, opts.get("host", "127.0.0.1"), opts.get("port", 8000),
             f"required, from ${key_env}" if config.api_key else "not required", config.max_batch)
    serve(app, opts.get("host", "127.0.0.1"), int(opts.get("port", 8000)), opts.get("log_level", "warning"))


MERGE_USAGE = """usage: nbeval merge <shard run folder | sweep folder> … [out=DIR] [cache_dir=DIR] [mlflow=true|false] [tracking_uri=URI]
  Assembles the shards of a sharded run into the run one unsharded job makes, e.g.
    nbeval run -m suite.shard=0/4,1/4,2/4,3/4 model=reference suite=[counting] hydra.sweep.dir=multirun/ref
    nbeval merge multirun/ref                       # → multirun/ref/merged/
  Each suite's tables are concatenated, its metrics and CIs recomputed on all samples, its plots redrawn;
  results.json, summary.md and an MLflow run (where the shards' config tracked to, under their multirun
  parent; tracking_uri= to choose, mlflow=false for none). A sweep folder holding the shards of several
  runs (e.g. -m model=a,b suite.shard=0/2,1/2) gives one merged run each, in out/<model>-<hash>/.
  Refuses shards whose configs, model, scorers or suites differ, and missing or duplicated shards.
  Images for the sample grids and galleries come from the shards' cache_dir (shared), or cache_dir=."""


def _merge_cmd(argv: list[str]) -> None:
    if not argv or argv[:1] in (["-h"], ["--help"]):
        print(MERGE_USAGE, file=sys.stdout if argv else sys.stderr)
        sys.exit(0 if argv else 2)
    opts, paths = parse_options(argv, {"out", "cache_dir", "mlflow", "tracking_uri"}, usage=MERGE_USAGE, positional=True)
    if not paths:
        print(f"nbeval merge: name the shard run folders or their sweep folder\n{MERGE_USAGE}", file=sys.stderr)
        sys.exit(2)
    from nbeval import api
    from nbeval.sharding import MergeError, merge, parent_run
    from nbeval.tracking import NullTracker

    try:
        merged = merge(paths, Path(opts["out"]) if "out" in opts else None, opts.get("cache_dir"))
    except MergeError as e:
        print(f"nbeval merge: {e}", file=sys.stderr)
        sys.exit(2)
    for where, run, shards in merged:
        tracker = api.make_tracker(run.config.get("tracking")) if _is_true(opts.get("mlflow", "true")) else NullTracker()
        if tracker.active and "tracking_uri" in opts:
            tracker.uri = opts["tracking_uri"]
        api.finalize(run, where, tracker, parent_run(shards))
        print(f"merged {len(shards)} shards ({', '.join(str(s.dir) for s in shards)}) into run folder: {where}", flush=True)


CARD_USAGE = """usage: nbeval scorer-card scorer=[<scorer>,…] [vlm=<judge backend> vlm.<key>=…] [n=100] [seed=0] [out=scorer_cards] [other overrides]
  How right each scorer is, on images whose truth is exact: the oracle's renders and graded damage that
  keeps their truth (conf/scorer_card.yaml: which suite and metric measure each role, which images).
  Writes <out>/<role>-<fingerprint>.md and .json, keeps the JSON under cache_dir/cards (runs with that
  scorer link it; runs without say "unvalidated"), and logs it to MLflow (experiment <name>-scorer-cards).
    nbeval scorer-card scorer=[counter] n=100
    nbeval scorer-card scorer=[vlm_count] vlm=world n=100
    nbeval scorer-card scorer=[vlm_count] vlm=openai_chat vlm.base_url=http://127.0.0.1:8000/v1 vlm.model=<model>"""


def _scorer_card_cmd(argv: list[str]) -> None:
    if argv[:1] in (["-h"], ["--help"]):
        print(CARD_USAGE)
        return
    _, overrides = parse_options(argv, set(), usage=CARD_USAGE, overrides=True)
    from nbeval.scorer_card import make_cards

    try:
        cards = make_cards(overrides)
    except (KeyError, ValueError, TypeError) as e:
        print(f"nbeval scorer-card: {e}", file=sys.stderr)
        sys.exit(2)
    for card, md, js in cards:
        print(md.read_text())
        print(f"scorer card: {md} (and {js.name})", flush=True)


COMMANDS = {"report": _report_cmd, "scorer-card": _scorer_card_cmd, "baseline": _baseline_cmd, "samples": _samples_cmd, "list": _list_cmd, "cache": _cache_cmd,
            "arena": _arena_cmd, "serve": _serve_cmd, "merge": _merge_cmd}
MODULE_COMMANDS = {"sync": "nbeval.sync"}  # the module's main(argv), imported on use


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
