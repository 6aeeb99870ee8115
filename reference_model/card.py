"""Measure a checkpoint through nbeval itself and write its model card.

    python -m reference_model.card reference-v3 --n 200

- plan accuracy of the learned planner on held-out prompts (a seed stream training never draws from);
- the text_rendering and counting suites (`nbeval run`, one run per preset: the model, its ablations,
  and the oracle drawn at the model's 128 px as the ceiling), with paired differences for the ablations;
- the drift suite (iterative edit chains) with edit context (keep unchanged tokens) vs regenerating,
  preservation against the true turn 0 and against the model's own;
- thought images beside the finals they conditioned (`<name>-thoughts.png`);
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

from nbeval.adapters.reference import DEFAULT_CHECKPOINT
from nbeval.stats import paired_difference, proportion
from nbeval.world import Scene
from reference_model import data, plan
from reference_model.export import CHECKPOINTS, PARTS
from reference_model.glyph import thought_image
from reference_model.model import ReferenceModel, Settings

PRESETS = ("reference", "reference_noplan", "reference_gtplan", "reference_nothought", "reference_noglyph", "reference_regression")
DRIFT_PRESETS = ("reference", "reference_noeditctx")
DRIFT_METRICS = ("edit_success", "preservation_ssim", "self_preservation_ssim", "drift_slope", "turns_to_failure")
HEADLINES = (("text_rendering", "exact_match"), ("text_rendering", "cer"), ("counting", "exact_accuracy"), ("counting", "mae"))
CEILING = ["model=oracle", "model.render_size=128", "model.name=oracle_128px"]  # ground truth at 128 px
SAMPLING = ("steps", "head_steps", "cfg_scale", "temperature")  # the preset's knobs the card's figures were drawn with
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


def thoughts_figure(model: ReferenceModel, n: int, path: Path) -> None:
    """Held-out prompts: each plan's thought image above the final it conditioned."""
    from nbeval.plots import plt

    settings = Settings()
    fig, axes = plt.subplots(2, n, figsize=(1.8 * n, 4.0), squeeze=False)
    for i in range(n):
        ex = data.example(random.Random(f"{HELD_OUT}:thought:{i}"), edit_rate=0.0)
        _, scene = model._plan_for(ex.prompt, i, settings, None)
        (final,) = model.generate([ex.prompt], [i], settings)
        for ax, img in zip(axes[:, i], (thought_image(scene, model.generator.sketch_px), final)):
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, i].set_title(ex.prompt[:28] + ("…" if len(ex.prompt) > 28 else ""), fontsize=6)
    axes[0, 0].set_ylabel("thought image")
    axes[1, 0].set_ylabel("final")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_suites(preset: str, suites: str, n: int, out: Path, checkpoint: str, extra: tuple[str, ...] = ()) -> Path:
    """`nbeval run` of one preset, exactly as a user would type it."""
    run_dir = out / f"{preset}-{suites.strip('[]').replace(',', '+')}"
    model = CEILING if preset == "oracle_128px" else [f"model={preset}", f"model.checkpoint={checkpoint}"]
    cmd = [sys.executable, "-m", "nbeval.cli", "run", *model, f"suite={suites}", f"n={n}", *extra, "tracking=none", f"hydra.run.dir={run_dir}"]
    subprocess.run(cmd, check=True)
    return run_dir


def per_sample(run_dir: Path, suite: str, metric: str) -> pd.Series:
    df = pd.read_parquet(run_dir / suite / "scores.parquet")
    return df[df.metric == metric].set_index("sample_id")["value"]


def drift_chains(run_dir: Path) -> pd.DataFrame:
    """Per-chain drift figures of a drift run, indexed by sample id."""
    from suites.drift import DriftSuite

    scores = pd.read_parquet(run_dir / "drift" / "scores.parquet")
    samples = pd.read_parquet(run_dir / "drift" / "samples.parquet")
    return DriftSuite().chains(scores[scores["error"].isna()], samples).set_index("sample_id")


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
        "and a thought image: the plan drawn by the world's renderer — shapes as coarse silhouettes, words as",
        "glyphs — that conditions every image token (layout conditioning as in GLIGEN and GlyphControl).",
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
        lines.append(f"| {part} | {meta['parameters'][part] / 1e6:.2f} M | {s['steps']}{'' if s.get('finished', True) else ' (unfinished)'} | {s['images']:,} | {s['wall_minutes']} |")
    lines += [
        f"| total (shipped) | {sum(meta['parameters'][p] for p in PARTS) / 1e6:.2f} M | | {total_images:,} | {sum(s['wall_minutes'] for s in st.values()):.1f} |",
        "",
        f"![loss curves]({name}-loss.png)",
        "",
        "## Quality, measured through nbeval",
        f"`python -m reference_model.card {name} --n {figures['n']}`: `nbeval run model=<preset> n={figures['n']}` on the",
        "text_rendering and counting suites (seed 0), scored by easyocr and the shape counter; 95% CIs",
        "(Wilson for proportions, bootstrap otherwise). `oracle_128px` is the ground truth drawn at the",
        "model's resolution: the ceiling."
        + (" Sampling (`conf/model/reference.yaml`): " + ", ".join(f"{k} {figures['sampling'][k]}" for k in SAMPLING) + "." if "sampling" in figures else ""),
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
        "## Thought images",
        "Held-out prompts: the plan drawn as the thought image (top), the final image it conditioned (bottom).",
        "",
        f"![thought images]({name}-thoughts.png)",
        "",
        "## Editing",
        f"The drift suite, iterative protocol (each turn edits the model's own image): `nbeval run model=<preset> suite=[drift] n={figures['drift_n']}`",
        f"({figures['drift_n']} chains of {figures['turns']} edits). *reference* keeps the tokens of regions the new plan did not change",
        "(edit context); *reference_noeditctx* draws every turn from scratch. Preservation is masked SSIM against the",
        "true turn-0 image outside everything the edits could change, self-preservation the same against the model's",
        "own turn 0 (what edit context should keep exactly); drift slope is preservation's per-chain slope per turn.",
        "",
        "| preset | " + " | ".join(DRIFT_METRICS) + " |",
        "|---|" + "---|" * len(DRIFT_METRICS),
    ]
    for preset, metrics in figures["drift"].items():
        lines.append(f"| {preset} | " + " | ".join(fmt(metrics[m]) if m in metrics else "–" for m in DRIFT_METRICS) + " |")
    lines += ["", "Paired over the same chains (bootstrap 95% CI):", "", "| comparison | metric | difference |", "|---|---|---|"]
    for row in figures["drift_paired"]:
        lines.append(f"| {row['comparison']} | {row['metric']} | {fmt(row['difference'], 4)} |")
    lines += ["", "Preservation SSIM per turn:", "", "| turn | " + " | ".join(figures["drift"]) + " |", "|---|" + "---|" * len(figures["drift"])]
    for t in range(figures["turns"] + 1):
        lines.append(f"| {t} | " + " | ".join(fmt(m[f"preservation_ssim/turn_{t}"]) if f"preservation_ssim/turn_{t}" in m else "–" for m in figures["drift"].values()) + " |")
    lines += ["", "## Sampling speed", "See `benchmarks/results/reference_sampling.md`.", ""]
    path = CHECKPOINTS / f"{name}.md"
    path.write_text("\n".join(lines))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description="Measure a reference-model checkpoint through nbeval and write its model card.")
    ap.add_argument("name", nargs="?", default=DEFAULT_CHECKPOINT, help="checkpoint name in reference_model/checkpoints/")
    ap.add_argument("--n", type=int, default=200, help="samples per suite")
    ap.add_argument("--plan-n", type=int, default=400, help="held-out prompts for plan accuracy")
    ap.add_argument("--chains", type=int, default=60, help="edit chains for the drift figures")
    ap.add_argument("--turns", type=int, default=5, help="edits per chain")
    ap.add_argument("--out", type=Path, default=Path("outputs/reference_card"))
    ap.add_argument("--from-figures", action="store_true", help="rewrite the card from <out>/figures.json without measuring again")
    args = ap.parse_args()
    torch.set_num_threads(2)
    meta = json.loads((CHECKPOINTS / f"{args.name}.json").read_text())
    if args.from_figures:
        print("wrote", write_card(args.name, meta, json.loads((args.out / "figures.json").read_text())))
        return
    model = ReferenceModel.load(CHECKPOINTS / f"{args.name}.safetensors")
    figures: dict = {"n": args.n, "drift_n": args.chains, "turns": args.turns, "suites": {}, "paired": [], "drift": {}, "drift_paired": []}
    thoughts_figure(model, 8, CHECKPOINTS / f"{args.name}-thoughts.png")
    figures["plan_accuracy"] = plan_accuracy(model, args.plan_n)
    print("plan accuracy", figures["plan_accuracy"], flush=True)
    runs = {}
    for preset in (*PRESETS, "oracle_128px"):
        runs[preset] = run_suites(preset, "[text_rendering,counting]", args.n, args.out, args.name)
        res = json.loads((runs[preset] / "results.json").read_text())
        if preset == "reference":
            figures["sampling"] = {k: res["config"]["model"][k] for k in SAMPLING}
        figures["suites"][preset] = {f"{s}/{m}": res["suites"][s]["metrics"][m] for s, m in HEADLINES}
    for preset in PRESETS[1:]:
        for s, m in HEADLINES:
            d = paired_difference(per_sample(runs["reference"], s, m), per_sample(runs[preset], s, m))
            figures["paired"].append({"comparison": f"reference − {preset}", "metric": f"{s}/{m}", "difference": d.to_dict()})
    chains = {}
    for preset in DRIFT_PRESETS:
        run = run_suites(preset, "[drift]", args.chains, args.out, args.name, (f"suite.drift.turns={args.turns}",))
        figures["drift"][preset] = json.loads((run / "results.json").read_text())["suites"]["drift"]["metrics"]
        chains[preset] = drift_chains(run)
    for m in ("preservation_ssim", "self_preservation_ssim", "drift_slope", "edit_success"):
        d = paired_difference(chains[DRIFT_PRESETS[0]][m], chains[DRIFT_PRESETS[1]][m])
        figures["drift_paired"].append({"comparison": " − ".join(DRIFT_PRESETS), "metric": m, "difference": d.to_dict()})
    (args.out / "figures.json").write_text(json.dumps(figures, indent=1))
    print("wrote", write_card(args.name, meta, figures))


if __name__ == "__main__":
    main()
