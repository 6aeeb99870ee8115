"""Tokenizer gate: do the reference model's latents keep the world legible?

Renders the text_rendering and counting suites' samples at the model's 128 px, reads them with the
suites' own scorers directly and after an encode → decode round trip through the tokenizer, and
compares (paired, same samples). The generator is only worth training on a tokenizer that passes.
The tokenizer's geometry comes from its checkpoint (a training checkpoint's config, or a shipped one's
JSON; a decoder stage's checkpoint takes the geometry of the tokenizer beside it). The results file's table is rewritten; everything from its history on is kept.

    python benchmarks/reference_tokenizer.py --tokenizer reference_model/runs/cpu/tokenizer.pt --n 200
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch
from PIL import Image

from nbeval.scorers.counting import ShapeCounter
from nbeval.scorers.ocr import EasyOCRScorer
from nbeval.stats import paired_difference, proportion
from nbeval.world import Scene, render
from reference_model.tokenizer import IMAGE_SIZE, Geometry, Tokenizer, to_images, to_tensor
from suites.counting import CountingSuite
from suites.text_rendering import TextRenderingSuite


def load(path: Path) -> Tokenizer:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = {k[len("tokenizer.") :]: v.float() for k, v in load_file(str(path)).items() if k.startswith("tokenizer.")}
        geometry = json.loads(path.with_suffix(".json").read_text())["stages"]["tokenizer"]["config"].get("geometry")
    else:
        saved = torch.load(path, map_location="cpu", weights_only=False)
        state, geometry = saved["model"], saved["config"].get("geometry")
        if geometry is None and path.stem == "decoder":  # the decoder stage fine-tunes the tokenizer beside it
            geometry = torch.load(path.parent / "tokenizer.pt", map_location="cpu", weights_only=False)["config"].get("geometry")
    tok = Tokenizer(Geometry.from_dict(geometry))
    tok.load_state_dict(state)
    return tok.eval()


@torch.no_grad()
def roundtrip(tok: Tokenizer, images: list[Image.Image], batch: int = 32) -> list[Image.Image]:
    out = []
    for i in range(0, len(images), batch):
        out += to_images(tok.decode(tok.encode(to_tensor(images[i : i + batch]))))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokenizer", type=Path, default=Path("reference_model/runs/cpu/tokenizer.pt"))
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/reference_tokenizer.md"))
    args = ap.parse_args()
    tok = load(args.tokenizer)
    g = tok.geometry
    rows, seconds = [], {}
    for suite, scorer in ((TextRenderingSuite(), EasyOCRScorer()), (CountingSuite(), ShapeCounter())):
        samples = suite.samples(args.n, 0)
        direct = [render(Scene.from_dict(s.truth[0]["scene"]), IMAGE_SIZE) for s in samples]
        t0 = time.perf_counter()
        decoded = roundtrip(tok, direct)
        seconds[suite.name] = time.perf_counter() - t0
        for label, images in (("render", direct), ("tokenizer round trip", decoded)):
            up = [im.resize((suite.image_size,) * 2, Image.Resampling.BICUBIC) for im in images]
            role = next(iter(suite.scorers))
            readings = scorer.read(up, [suite.scorer_truth(s, 0, role) for s in samples])
            for s, r in zip(samples, readings):
                for sc in suite.score(s, 0, {role: r}):
                    rows.append({"suite": suite.name, "input": label, "sample": s.id, "metric": sc.metric, "value": sc.value})
        print(f"{suite.name}: round trip of {len(samples)} images in {seconds[suite.name]:.1f} s")
    df = pd.DataFrame(rows)
    lines = [
        "# Reference tokenizer gate",
        "",
        f"`python benchmarks/reference_tokenizer.py --tokenizer {args.tokenizer} --n {args.n}`; suites' samples (seed 0)",
        f"rendered at {IMAGE_SIZE} px, upscaled (bicubic) to the suite's size, read by the suite's scorer.",
        f"Latents {g.latent_side}×{g.latent_side}×{g.channels} ({IMAGE_SIZE // g.latent_side}× downsampling, widths {list(g.widths)}),"
        f" patched {g.patch}×{g.patch}: {g.n_tokens} tokens of {g.token_dim}; round trip"
        f" {1000 * sum(seconds.values()) / (2 * args.n):.0f} ms per image in batches of 32 at {torch.get_num_threads()} threads.",
        "",
        "| suite | metric | render | round trip | paired difference [95% CI] |",
        "|---|---|---|---|---|",
    ]
    for suite, metric in (("text_rendering", "exact_match"), ("text_rendering", "cer"), ("counting", "exact_accuracy")):
        sel = df[(df.suite == suite) & (df.metric == metric)].pivot(index="sample", columns="input", values="value")
        a, b = sel["tokenizer round trip"], sel["render"]
        diff = paired_difference(a, b)
        fmt = (lambda s: f"{proportion(s).value:.3f} [{proportion(s).ci_low:.3f}, {proportion(s).ci_high:.3f}]") if metric != "cer" else (lambda s: f"{s.mean():.3f}")
        lines.append(f"| {suite} | {metric} | {fmt(b)} | {fmt(a)} | {diff.value:+.3f} [{diff.ci_low:+.3f}, {diff.ci_high:+.3f}] |")
    old = args.out.read_text() if args.out.exists() else ""
    history = old[old.index("History of this gate") :] if "History of this gate" in old else ""
    args.out.write_text("\n".join(lines) + "\n\n" + history)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
