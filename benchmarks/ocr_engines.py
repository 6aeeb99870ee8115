"""OCR engines against their speed and the OCR scorer card: easyocr (the default) and Tesseract at
several upscales read the card's images (conf/scorer_card.yaml: the oracle's text renders, graded
blur, the other styles) and, optionally, a model's own text renders, where no truth says who is right
and the column is how often each engine reads the text easyocr reads.

    python benchmarks/ocr_engines.py --n 100 --model reference --out benchmarks/results/ocr_engines.md

An engine is `easyocr` or `tesseract/<upscale>`; the first is the one the others' readings are
compared with.
"""

from __future__ import annotations

import argparse
import os

from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from ocr_settings import card_images, timed_reads, write_report
from nbeval.adapters.base import GenRequest
from nbeval.scorers.base import Scorer
from nbeval.scorers.ocr import EasyOCRScorer
from nbeval.scorers.ocr_tesseract import TesseractOCRScorer
from nbeval.textmetrics import compare

ENGINES = ["easyocr", "tesseract/1", "tesseract/1.25", "tesseract/1.5", "tesseract/2"]


def scorer(engine: str) -> Scorer:
    if engine == "easyocr":
        return EasyOCRScorer()
    name, _, upscale = engine.partition("/")
    if name != "tesseract" or not upscale:
        raise ValueError(f"an engine is easyocr or tesseract/<upscale>, got {engine!r}")
    return TesseractOCRScorer(upscale=float(upscale))


def model_images(model: str, n: int, seed: int) -> tuple[list, list[str]]:
    """A model's text_rendering images for the first n samples, and the texts asked for."""
    with initialize_config_module(config_module="nbeval.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"model={model}", "suite=[text_rendering]"])
        suite, adapter = instantiate(cfg.suite.text_rendering), instantiate(cfg.model)
    samples = suite.samples(n, seed)
    reqs = [GenRequest(s.id, s.prompt, s.seed, suite.image_size, s.truth[0]) for s in samples]
    return [g.image for g in adapter.generate(reqs)], [s.truth[0]["text"] for s in samples]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engines", nargs="*", default=ENGINES, help="easyocr or tesseract/<upscale>; the first is the reference")
    p.add_argument("--model", default=None, help="also read this model's text renders (e.g. reference)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    images = card_images(args.n, args.seed, None)
    if args.model:
        images[args.model] = model_images(args.model, args.n, args.seed)
    load0 = os.getloadavg()[0]
    rows, reference = [], None
    for engine in args.engines:
        rate, readings = timed_reads(scorer(engine), images, warmup=4)
        texts = {label: [r["text"] for r in v] for label, v in readings.items()}
        reference = reference or texts
        exact = {label: sum(compare(t, r)["exact_match"] for t, r in zip(truth, texts[label])) for label, (_, truth) in images.items()}
        card = [label for label in images if label != args.model]
        agree = sum(a == b for label in images for a, b in zip(texts[label], reference[label]))
        cells = [f"{exact[v]:.0f}" for v in card] + ([f"{exact[args.model]:.0f} ({sum(a == b for a, b in zip(texts[args.model], reference[args.model]))})"] if args.model else [])
        rows.append(f"| `{engine}` | {rate:.1f} | {agree}/{sum(len(t) for _, t in images.values())} | {sum(exact[v] for v in card):.0f} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    cols = [label for label in images if label != args.model] + ([f"{args.model} (same text as {args.engines[0]})"] if args.model else [])
    command = (f"python benchmarks/ocr_engines.py --n {args.n} --seed {args.seed} --engines {' '.join(args.engines)}"
               + (f" --model {args.model}" if args.model else "") + f" --out {args.out}")
    legend = [f"{args.n} images per variant. Columns: images/s over all of them (after a warm-up); texts equal to the first engine's;",
              f"the card's exact matches summed over its variants, then on each variant (out of {args.n})"
              + (f"; on {args.model}'s own images, exact matches and, in brackets, texts equal to the first engine's." if args.model else ".")]
    write_report(args.out, "OCR engines: speed against the scorer card", "", load0, command, legend, ["engine", "images/s", "same text", "card total", *cols], rows)


if __name__ == "__main__":
    main()
