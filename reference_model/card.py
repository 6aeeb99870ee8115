"""Measure a checkpoint through nbeval itself and write its model card.

    python -m reference_model.card reference-cpu --n 200

- plan accuracy of the learned planner on held-out prompts (a seed stream training never draws from);
- the text_rendering and counting suites (`nbeval run`, one run per preset: the model, its ablations,
  and the oracle drawn at the model's 128 px as the ceiling), with paired differences for the ablations;
- edit drift over multi-turn edit chains, with edit context (keep unchanged tokens) vs regenerating;
- the training facts `export.py` recorded.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from nbeval.stats import bootstrap_mean, paired_difference, proportion
from nbeval.world import COMMON_WORDS, RARE_LETTER_WORDS, LayoutError, Scene, apply_edit, scene_prompt
from reference_model import data, plan
from reference_model.export import CHECKPOINTS, PARTS
from reference_model.model import ReferenceModel, Settings, changed_tokens, image_key

PRESETS = ("reference", "reference_noplan", "reference_gtplan", "reference_noglyph", "reference_regression")
HEADLINES = (("text_rendering", "exact_match"), ("text_rendering", "cer"), ("counting", "exact_accuracy"), ("counting", "mae"))
CEILING = ["model=oracle", "model.render_size=128", "model.name=oracle_128px"]  # ground truth at 128 px
HELD_OUT = "held-out"  # training seeds are "<seed>:<stage>:<step>"; this prefix never occurs there


def _groups(scene: Scene) -> Counter:
    return Counter((s.kind, s.colour) for s in scene.shapes)


def plan_accuracy(model: ReferenceModel, n: int) -> dict:
    """Share of held-out prompts whose sampled plan has exactly the requested objects (kind × colour
    counts) and text; for edits, the requested after-scene's objects and text."""
    hits: dict[str, list[float]] = {"generate": [], "edit": []}
    settings = Settings()
    for i in range(n):
        rng = random.Random(f"{HELD_OUT}:{i}")
        ex = data.example(rng, edit_rate=0.5)
        prev = plan.encode(plan.quantise(ex.before)) if ex.before is not None else None
        got = plan.decode(model.plan(ex.prompt, i, settings, prev))
        ok = _groups(got) == _groups(ex.scene) and got.text().upper() == ex.scene.text().upper()
        hits["edit" if prev else "generate"].append(float(ok))
    return {k: proportion(np.array(v)).to_dict() for k, v in hits.items()}


def run_suites(preset: str, n: int, out: Path, checkpoint: str) -> Path:
    """`nbeval run` of one preset, exactly as a user would type it."""
    run_dir = out / preset
    model = CEILING if preset == "oracle_128px" else [f"model={preset}", f"model.checkpoint={checkpoint}"]
    subprocess.run([sys.executable, "-m", "nbeval.cli", "run", *model, f"n={n}", "tracking=none", f"hydra.run.dir={run_dir}"], check=True)
    return run_dir


def per_sample(run_dir: Path, suite: str, metric: str) -> pd.Series:
    df = pd.read_parquet(run_dir / suite / "scores.parquet")
    return df[df.metric == metric].set_index("sample_id")["value"]


def edit_drift(model: ReferenceModel, chains: int, turns: int) -> dict:
    """Mean absolute pixel change (0–255) outside everything the chain's edits touched, turn t vs turn 0:
    what an edit disturbed that it should have left alone."""
    out = {}
    for label, ctx in (("edit context", True), ("regenerate", False)):
        settings = Settings(edit_context=ctx)
        curves = np.full((chains, turns + 1), np.nan)
        for c in range(chains):
            rng = random.Random(f"{HELD_OUT}:drift:{c}")
            scene, grouped = data.random_scene(rng, "mixed")
            prompt = scene_prompt(scene, grouped=grouped)
            (img,) = model.generate([prompt], [c], settings, size=128)
            first, first_scene = np.asarray(img, dtype=np.float32), plan.decode(model._plans.get(image_key(img)) or plan.encode(scene))
            instructions: list[str] = []
            touched = torch.zeros(64, dtype=torch.bool)
            curves[c, 0] = 0.0
            for t in range(1, turns + 1):
                try:
                    e = apply_edit(scene, rng, vocabulary=COMMON_WORDS + RARE_LETTER_WORDS)
                except LayoutError:
                    break
                instructions.append(e.instruction)
                img = model.edit(prompt, tuple(instructions), img, c, settings, size=128)
                planned = plan.decode(model._plans.get(image_key(img)) or plan.encode(e.after))
                touched |= changed_tokens(first_scene, planned) | changed_tokens(e.before, e.after)
                scene = e.after
                keep = (~touched).reshape(8, 8).repeat_interleave(16, 0).repeat_interleave(16, 1).numpy()
                if keep.any():
                    curves[c, t] = float(np.abs(np.asarray(img, dtype=np.float32) - first)[keep].mean())
        out[label] = [bootstrap_mean(curves[:, t]).to_dict() for t in range(turns + 1)]
    return out


def fmt(e: dict, digits: int = 3) -> str:
    return f"{e['value']:.{digits}f} [{e['ci_low']:.{digits}f}, {e['ci_high']:.{digits}f}]"


def write_card(name: str, meta: dict, figures: dict) -> Path:
    st = meta["stages"]
    total_images = sum(s["images"] for s in st.values())
    lines = [
        f"# Model card: {name}",
        "",
        "nbeval's reference model: a small hybrid built from open components — a KL autoencoder tokenizer",
        "(as in latent diffusion), a byte-level planner, one transformer generating continuous image tokens in",
        "random order (MAR-style masked autoregression), a per-token MLP diffusion head (MAR's diffusion loss)",
        "and glyph conditioning (the planned words drawn into a canvas, as in glyph-conditioned text renderers).",
        "It is not a copy of any closed model. Trained only on nbeval's synthetic world (flat shapes and",
        "rendered words on white, 128×128), it means nothing outside that world.",
        "",
        "## Training",
        f"- Preset `{meta['preset']}`, seed {meta['seed']}, `python -m reference_model.train preset={meta['preset']}`; hardware: {meta['hardware']}; torch {meta['torch']}.",
        f"- Checkpoint: `{name}.safetensors`, fp16, {meta['bytes'] / 1e6:.1f} MB, sha256 `{meta['sha256']}`.",
        *([f"- {meta['notes']}"] if meta.get("notes") else []),
        "",
        "| part | parameters | steps | images seen | wall time (min) |",
        "|---|---|---|---|---|",
    ]
    for part, s in st.items():
        lines.append(f"| {part} | {meta['parameters'][part] / 1e6:.2f} M | {s['steps']} | {s['images']:,} | {s['wall_minutes']} |")
    lines += [
        f"| total (shipped) | {sum(meta['parameters'][p] for p in PARTS) / 1e6:.2f} M | | {total_images:,} | {sum(s['wall_minutes'] for s in st.values()):.1f} |",
        "",
        f"![loss curves]({name}-loss.png)",
        "",
        "## Quality, measured through nbeval",
        f"`python -m reference_model.card {name} --n {figures['n']}`: `nbeval run model=<preset> n={figures['n']}` on the",
        "text_rendering and counting suites (seed 0), scored by easyocr and the shape counter; 95% CIs",
        "(Wilson for proportions, bootstrap otherwise). `oracle_128px` is the ground truth drawn at the",
        "model's resolution: the ceiling.",
        "",
        "| preset | " + " | ".join(f"{s} {m}" for s, m in HEADLINES) + " |",
        "|---|" + "---|" * len(HEADLINES),
    ]
    for preset, metrics in figures["suites"].items():
        lines.append(f"| {preset} | " + " | ".join(fmt(metrics[f'{s}/{m}']) for s, m in HEADLINES) + " |")
    lines += ["", "Paired differences against the full model (same samples and seeds; bootstrap 95% CI):", "", "| comparison | metric | difference |", "|---|---|---|"]
    for row in figures["paired"]:
        lines.append(f"| {row['comparison']} | {row['metric']} | {fmt(row['difference'])} |")
    pa = figures["plan_accuracy"]
    lines += [
        "",
        f"Plan accuracy (requested objects by kind × colour and the text exactly right) on held-out prompts: "
        f"generate {fmt(pa['generate'])} (n={pa['generate']['n']}), edit {fmt(pa['edit'])} (n={pa['edit']['n']}).",
        "",
        "## Editing",
        "Mean absolute pixel change (0–255) outside everything a chain's edits touched, turn t against turn 0",
        f"({figures['drift_chains']} chains of mixed scenes); *edit context* keeps the tokens of regions the new plan did not",
        "change, *regenerate* draws every turn from scratch:",
        "",
        "| turn | " + " | ".join(figures["drift"]) + " |",
        "|---|" + "---|" * len(figures["drift"]),
    ]
    for t in range(len(next(iter(figures["drift"].values())))):
        lines.append(f"| {t} | " + " | ".join(fmt(c[t], 1) for c in figures["drift"].values()) + " |")
    lines += ["", "## Sampling speed", "See `benchmarks/results/reference_sampling.md`.", ""]
    path = CHECKPOINTS / f"{name}.md"
    path.write_text("\n".join(lines))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description="Measure a reference-model checkpoint through nbeval and write its model card.")
    ap.add_argument("name", nargs="?", default="reference-cpu", help="checkpoint name in reference_model/checkpoints/")
    ap.add_argument("--n", type=int, default=200, help="samples per suite")
    ap.add_argument("--plan-n", type=int, default=400, help="held-out prompts for plan accuracy")
    ap.add_argument("--chains", type=int, default=30, help="edit chains for the drift figures")
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("outputs/reference_card"))
    ap.add_argument("--from-figures", action="store_true", help="rewrite the card from <out>/figures.json without measuring again")
    args = ap.parse_args()
    torch.set_num_threads(2)
    meta = json.loads((CHECKPOINTS / f"{args.name}.json").read_text())
    if args.from_figures:
        print("wrote", write_card(args.name, meta, json.loads((args.out / "figures.json").read_text())))
        return
    model = ReferenceModel.load(CHECKPOINTS / f"{args.name}.safetensors")
    figures: dict = {"n": args.n, "drift_chains": args.chains, "suites": {}, "paired": []}
    figures["plan_accuracy"] = plan_accuracy(model, args.plan_n)
    print("plan accuracy", figures["plan_accuracy"], flush=True)
    figures["drift"] = edit_drift(model, args.chains, args.turns)
    runs = {}
    for preset in (*PRESETS, "oracle_128px"):
        runs[preset] = run_suites(preset, args.n, args.out, args.name)
        res = json.loads((runs[preset] / "results.json").read_text())
        figures["suites"][preset] = {f"{s}/{m}": res["suites"][s]["metrics"][m] for s, m in HEADLINES}
    for preset in PRESETS[1:]:
        for s, m in HEADLINES:
            d = paired_difference(per_sample(runs["reference"], s, m), per_sample(runs[preset], s, m))
            figures["paired"].append({"comparison": f"reference − {preset}", "metric": f"{s}/{m}", "difference": d.to_dict()})
    (args.out / "figures.json").write_text(json.dumps(figures, indent=1))
    print("wrote", write_card(args.name, meta, figures))


if __name__ == "__main__":
    main()
