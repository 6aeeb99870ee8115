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
            `nbeval run --help` lists every config group and option.
  samples   write a suite's samples (ids, prompts) as JSONL, to generate images elsewhere:
              nbeval samples suite=[text_rendering] n=200 seed=0 --out prompts.jsonl
  arena     arena ratings from a battles file (ours or FastChat/LMArena's schema):
              nbeval arena leaderboard battles=<file.parquet|.jsonl|.csv> [out=DIR] [anchor=MODEL]
                                       [anchor_rating=1000] [rounds=100] [seed=0] [mlflow=true|false]
  list      registered suites and the model, suite, scorer and tracking configs
  cache     cache statistics: nbeval cache stats [--dir DIR]

Tracking goes where MLFLOW_TRACKING_URI points (default sqlite:///mlflow.db);
then: mlflow ui --backend-store-uri sqlite:///mlflow.db
"""

CONFIG_MODULE = "nbeval.conf"
log = logging.getLogger("nbeval")


def evaluate(cfg, out_dir: Path, parent_run_id: str | None = None, extra_tags: dict | None = None) -> dict:
    """Run one job: the configured model on every configured suite. Returns results.json's content."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from nbeval.cache import Cache
    from nbeval.registry import load
    from nbeval.results import build_results, summary_markdown, write_run
    from nbeval.runner import score_suite

    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    model = instantiate(cfg.model)
    suites = {}
    for name, scfg in cfg.suite.items():
        suites[name] = instantiate(scfg) if "_target_" in scfg else load(name)(**scfg)
        missing = suites[name].capabilities - model.capabilities
        if missing:
            raise ValueError(f"suite {name!r} needs model capabilities {sorted(missing)} that {model.name!r} lacks")
    scorers: dict = {}

    def scorer_for(role: str):
        if role not in scorers:
            if role not in cfg.scorer:
                raise KeyError(f"a suite needs scorer {role!r}, but the config has none (scorer={list(cfg.scorer)})")
            scorers[role] = instantiate(cfg.scorer[role])
        return scorers[role]

    cache = Cache(cfg.cache_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = [score_suite(s, model, scorer_for, cache, cfg.n, cfg.seed, cfg.batch_size) for s in suites.values()]
    res = build_results(container, model, scorers, results, out_dir)
    write_run(res, results, cache, out_dir)
    print(summary_markdown(res, suites), flush=True)
    for r in results:
        if r.n_failed_generations or r.n_failed_scores:
            log.warning("%s: %d failed generations, %d failed scores (see the tables' error column)", r.suite.name, r.n_failed_generations, r.n_failed_scores)
    if cfg.get("tracking"):
        tracker = instantiate(cfg.tracking)
        res["mlflow_run_id"] = tracker.log_run(res, results, out_dir, parent_run_id=parent_run_id, tags=extra_tags)
        (out_dir / "results.json").write_text(json.dumps(res, indent=2, default=str))
        print(f"MLflow run {res['mlflow_run_id']} at {tracker.uri}", flush=True)
    print(f"run folder: {out_dir}", flush=True)
    return res


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
        evaluate(cfg, Path(hc.runtime.output_dir), parent, tags)

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

    cfg = _compose(args.overrides)
    n_written = 0
    with open(args.out, "w") as f:
        for scfg in cfg.suite.values():
            for s in instantiate(scfg).samples(cfg.n, cfg.seed):
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
    for group in ("model", "suite", "scorer", "tracking"):
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


def _arena_cmd(argv: list[str]) -> None:
    usage = "usage: nbeval arena leaderboard battles=FILE [out=DIR] [anchor=MODEL] [anchor_rating=1000] [rounds=100] [seed=0] [mlflow=true|false]"
    if not argv or argv[0] != "leaderboard" or any("=" not in a for a in argv[1:]):
        print(usage, file=sys.stderr)
        sys.exit(2)
    opts = dict(a.split("=", 1) for a in argv[1:])
    unknown = set(opts) - {"battles", "out", "anchor", "anchor_rating", "rounds", "seed", "mlflow"}
    if unknown or "battles" not in opts:
        print(f"nbeval arena: {'unknown options ' + ', '.join(sorted(unknown)) if unknown else 'battles= is required'}\n{usage}", file=sys.stderr)
        sys.exit(2)
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


COMMANDS = {"samples": _samples_cmd, "list": _list_cmd, "cache": _cache_cmd, "arena": _arena_cmd}


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
    else:
        print(f"nbeval: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
