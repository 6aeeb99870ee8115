"""`nbeval scorer-card scorer=[…] [vlm=…] n=… seed=…`: how right a scorer — an instrument or a judge
— is, measured where nbeval knows the answer, before a number from it is believed.

For each role the config's scorer list fills, the suite that exercises that role (`card.roles` in
conf/scorer_card.yaml: counter → counting's exact accuracy, ocr → text_rendering's exact match, …) runs
on the oracle's renders and on graded damage that keeps their truth (`card.variants`: blur, …): on
those images the truth is what the image shows, so the suite's metric is the scorer's own accuracy
against the truth, with its CI. An arena judge (`nbeval scorer-card judge=vlm_pairwise …`) gets the
clean oracle against graded damage that breaks the prompt (`card.judge`): its agreement with the
truth's order is the clean image's win rate. Everything goes through the cache (images, and readings by
the scorer's fingerprint), so a card is cheap to redo. The card is written as Markdown and JSON
(`out`), kept under the cache by the scorer's fingerprint (`cards_dir`: runs with that scorer link it
in results.json; runs with a scorer that has none say "unvalidated"), and logged to MLflow.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from nbeval import api
from nbeval.results import cards_dir, write_json

CONFIG_NAME = "scorer_card"  # conf/scorer_card.yaml: the roles' recipes and the images


def _variants(spec: list[dict]) -> list[tuple[str, int | None]]:
    return [(v["model"], s) for v in spec for s in (v.get("severity") or [None])]


def _trend(values: list[float | None]) -> str:
    """How a card's values move as the damage grows: "falls", "rises", "flat" or "neither"."""
    if None in values or len(values) < 2:
        return "neither"
    if all(a == b for a, b in zip(values, values[1:])):
        return "flat"
    return "falls" if all(a >= b for a, b in zip(values, values[1:])) else "rises" if all(a <= b for a, b in zip(values, values[1:])) else "neither"


def measure(overrides: Sequence[str], role: str) -> dict:
    """The card of the scorer in `role` — or, for role "judge", of the run's arena judge: its accuracy
    on every variant (a dict, as the card's JSON holds it)."""
    cfg = api.compose(overrides, CONFIG_NAME)
    spec = cfg.card.judge if role == "judge" else cfg.card.roles.get(role)
    if spec is None:
        raise KeyError(f"no card recipe for scorer role {role!r} (card.roles: {', '.join(cfg.card.roles)})")
    rows, who = [], None
    for model, severity in _variants(OmegaConf.to_container(spec.get("variants") or cfg.card.variants, resolve=True)):
        if role == "judge":  # the clean oracle against the damaged one, on the base suite's prompts: the truth's order is known
            extra = ["suite=arena", f"suite.arena.base={spec.base}", f"model=[oracle,{model}]"]
        else:
            extra = [f"model={model}", f"suite=[{spec.suite}]"]
        run = api.evaluate(api.compose([*overrides, *extra, *([f"model.severity={severity}"] if severity is not None else [])], CONFIG_NAME))
        (result,) = run.results
        if role == "judge":
            judge = result.suite.judge
            who = {"name": judge.name, "class": f"{type(judge).__module__}.{type(judge).__qualname__}",
                   "fingerprint": str(result.tables["battles"]["judge_fingerprint"].iloc[0])}
        else:
            who = run.scorers[role]
        est = result.metrics.get(spec.metric)
        rows.append({"model": model, "severity": severity, "n": len(result.samples), "failed_readings": result.n_failed_scores,
                     "failure_reasons": result.failure_reasons,
                     **({"value": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high, "method": est.method} if est else {"value": None})})
    trend = {m: _trend([r["value"] for r in rows if r["model"] == m]) for m in dict.fromkeys(r["model"] for r in rows if r["severity"] is not None)}
    return {"role": role, "fingerprint": who["fingerprint"], "scorer": who, "suite": spec.suite, "metric": spec.metric, "what": spec.what,
            "n": cfg.n, "seed": cfg.seed, "rows": rows, "with_damage": trend,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def markdown(card: dict) -> str:
    scorer = card["scorer"]
    lines = [f"# Scorer card: {card['role']} — {scorer.get('name')} ({scorer.get('class')})", "",
             f"Fingerprint `{card['fingerprint']}`. {card['what']}: `{card['suite']}/{card['metric']}` on images whose truth is exact "
             f"(n={card['n']}, seed={card['seed']}, 95% CIs). Failed readings (a judge's refusals, unparsable answers, timeouts) are "
             "counted, never scored.", "",
             "| images | severity | value [95% CI] | n | failed readings |", "|---|---|---|---|---|"]
    for r in card["rows"]:
        value = "—" if r["value"] is None else f"{r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        reasons = ", ".join(f"{k} {v}" for k, v in r["failure_reasons"].items())
        lines.append(f"| {r['model']} | {'—' if r['severity'] is None else r['severity']} | {value} | {r['n']} | {r['failed_readings']}{f' ({reasons})' if reasons else ''} |")
    for model, trend in card["with_damage"].items():
        lines.append(f"\nAs `{model}`'s severity grows it {'stays flat' if trend == 'flat' else trend if trend != 'neither' else 'is **not monotonic**'}.")
    if "judge" in scorer:
        lines += ["", f"Judge: `{json.dumps(scorer['judge'], sort_keys=True)[:800]}`"]
    return "\n".join(lines) + "\n"


def write(card: dict, out: Path, cache_dir: str | Path) -> tuple[Path, Path]:
    """`<out>/<role>-<fingerprint>.md/.json`, and the JSON under the cache for runs to link."""
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{card['role']}-{card['fingerprint']}"
    md, js = stem.with_suffix(".md"), stem.with_suffix(".json")
    md.write_text(markdown(card))
    write_json(js, card)
    cards_dir(cache_dir).mkdir(parents=True, exist_ok=True)
    write_json(cards_dir(cache_dir) / f"{card['fingerprint']}.json", {**card, "markdown": str(md.resolve())})
    return md, js


def make_cards(overrides: Sequence[str]) -> list[tuple[dict, Path, Path]]:
    """A card for every role the config's scorer list fills — or, when the overrides choose an arena
    judge (`judge=…`), for that judge alone — written and tracked."""
    cfg = api.compose(overrides, CONFIG_NAME)
    tracker = api.make_tracker(cfg.tracking)
    done = []
    judged = any(o.split("=", 1)[0].lstrip("+") == "judge" for o in overrides)
    for role in ["judge"] if judged else list(cfg.scorer):
        card = measure(overrides, role)
        md, js = write(card, Path(cfg.out), cfg.cache_dir)
        if tracker.active:
            tracker.log_scorer_card(card, [md, js])
        done.append((card, md, js))
    return done
