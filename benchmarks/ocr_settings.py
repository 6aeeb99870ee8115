"""easyocr's settings against its speed and its scorer card: each setting reads the OCR card's images
(conf/scorer_card.yaml: the oracle's text renders, graded blur, the other styles) and is reported with
its images/s, its exact match on every variant (the card's metric), and how many of its readings equal
the first setting's (the text alone, and whole: text, boxes and confidences).

    python benchmarks/ocr_settings.py --n 100 --out benchmarks/results/ocr_settings.md
    python benchmarks/ocr_settings.py --n 96 --variants oracle --out benchmarks/results/ocr_settings_speed.md

A setting is `detect_side/batch_size/layout`: the side CRAFT sees (the recogniser reads crops at 256 px
either way), images per detector call, and the detector's form: "cl" channels-last (the scorer's),
"nchw" the code before channels-last, "int8" CRAFT quantised after training (torch.ao FX, x86 backend,
per-channel int8 weights, activations calibrated on 16 clean text renders of another seed than the
card's). The first setting is the reference the others' readings are compared with.

    python benchmarks/ocr_settings.py --n 100 --settings 256/1/cl 256/1/int8 --out benchmarks/results/ocr_settings_int8.md
"""

from __future__ import annotations

import argparse
import copy
import os
import time

import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import OmegaConf

from nbeval.adapters.base import GenRequest
from nbeval.scorer_card import _variants
from nbeval.scorers.base import Scorer
from nbeval.scorers.ocr import EasyOCRScorer
from nbeval.textmetrics import compare

SETTINGS = ["256/8/nchw", "256/1/cl", "192/4/cl", "160/4/cl", "128/4/cl"]


def card_images(n: int, seed: int, only: set[str] | None) -> dict[str, tuple[list, list[str]]]:
    """Variant label → (images, requested texts) for the OCR card's variants."""
    with initialize_config_module(config_module="nbeval.conf", version_base="1.3"):
        card = compose("scorer_card")
        out = {}
        for model, severity in _variants(OmegaConf.to_container(card.card.variants)):
            if only and model not in only:
                continue
            cfg = compose("config", overrides=[f"model={model}", "suite=[text_rendering]", *([f"model.severity={severity}"] if severity is not None else [])])
            suite, adapter = instantiate(cfg.suite.text_rendering), instantiate(cfg.model)
            samples = suite.samples(n, seed)
            reqs = [GenRequest(s.id, s.prompt, s.seed, suite.image_size, s.truth[0]) for s in samples]
            out[model if severity is None else f"{model} {severity}"] = ([g.image for g in adapter.generate(reqs)], [s.truth[0]["text"] for s in samples])
    return out


def timed_reads(scorer: Scorer, images: dict[str, tuple[list, list[str]]], warmup: int) -> tuple[float, dict[str, list[dict]]]:
    """images/s (after reading `warmup` images, which loads the weights) and the readings, by variant."""
    first = next(iter(images.values()))
    scorer.read(first[0][:warmup], [{}] * warmup)
    t0, count, readings = time.perf_counter(), 0, {}
    for label, (imgs, _) in images.items():
        readings[label] = scorer.read(imgs, [{}] * len(imgs))
        count += len(imgs)
    return count / (time.perf_counter() - t0), readings


def write_report(out: str, title: str, machine_extra: str, load0: float, command: str, legend: list[str], header: list[str], rows: list[str]) -> None:
    """The benchmark's markdown: title, machine and load, the command that made it, a legend, the table."""
    lines = [
        f"# {title}",
        "",
        f"Machine: {os.cpu_count()} cores, no GPU{machine_extra}; load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at the end.",
        f"Command: `{command}`",
        "",
        *legend,
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *rows,
    ]
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote", out)


def int8_copy(detector: torch.nn.Module, inputs: list[torch.Tensor]) -> torch.nn.Module:
    """A post-training int8 copy of CRAFT (torch.ao FX, x86 backend: per-channel weights), its
    activation ranges those the detector sees on `inputs`."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    prepared = prepare_fx(copy.deepcopy(detector).to(memory_format=torch.contiguous_format).eval(), get_default_qconfig_mapping("x86"), (inputs[0],))
    with torch.no_grad():
        for x in inputs:
            prepared(x)
    return convert_fx(prepared)


def quantize_detector(scorer: EasyOCRScorer, calibration: list) -> None:
    """Swap the scorer's CRAFT for its int8 copy, calibrated on what CRAFT sees of `calibration`
    (easyocr's own preprocessing, captured by a hook on a float reading)."""
    detector, inputs = scorer.reader.detector, []
    hook = detector.register_forward_pre_hook(lambda _module, args: inputs.append(args[0].contiguous()))
    scorer.read(calibration, [{}] * len(calibration))
    hook.remove()
    scorer.reader.detector = int8_copy(detector, inputs)


def read_all(setting: str, images: dict[str, tuple[list, list[str]]], seed: int) -> tuple[float, dict[str, list[dict]]]:
    """images/s and readings of one `detect_side/batch_size/layout` setting."""
    side, batch, layout = setting.split("/")
    scorer = EasyOCRScorer(detect_side=int(side), batch_size=int(batch))
    if layout == "nchw":
        scorer.reader.detector = scorer.reader.detector.to(memory_format=torch.contiguous_format)
    elif layout == "int8":
        quantize_detector(scorer, card_images(16, seed + 999, {"oracle"})["oracle"][0])
    return timed_reads(scorer, images, warmup=8)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--settings", nargs="*", default=SETTINGS, help="detect_side/batch_size/{cl,nchw,int8}; the first is the reference")
    p.add_argument("--variants", nargs="*", default=None, help="card models to keep (oracle, oracle_blur, oracle_style); default all")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    images = card_images(args.n, args.seed, set(args.variants) if args.variants else None)
    load0 = os.getloadavg()[0]
    rows, reference = [], None
    for setting in args.settings:
        rate, readings = read_all(setting, images, args.seed)
        reference = reference or readings
        exact = {label: sum(compare(t, r["text"])["exact_match"] for t, r in zip(texts, readings[label])) for label, (_, texts) in images.items()}
        flat, ref = [r for v in readings.values() for r in v], [r for v in reference.values() for r in v]
        same_text, same_all = sum(a["text"] == b["text"] for a, b in zip(flat, ref)), sum(a == b for a, b in zip(flat, ref))
        rows.append(f"| `{setting}` | {rate:.2f} | {same_text}/{len(ref)} | {same_all}/{len(ref)} | " + " | ".join(f"{exact[v]:.0f}" for v in images) + " |")
        print(rows[-1], flush=True)
    n_total = sum(len(t) for _, t in images.values())
    command = (f"python benchmarks/ocr_settings.py --n {args.n} --seed {args.seed} --settings {' '.join(args.settings)}"
               + (f" --variants {' '.join(args.variants)}" if args.variants else "") + f" --out {args.out}")
    legend = [f"{n_total} images ({args.n} per variant). Columns: images/s over all of them (after a warm-up batch); readings equal to the",
              f"first setting's (text; whole: text, boxes, confidences); exact matches out of {args.n} on each variant (the card's metric)."]
    write_report(args.out, "easyocr settings: speed against the scorer card", f", torch threads {torch.get_num_threads()}", load0, command, legend,
                 ["setting", "images/s", "same text", "same reading", *images], rows)

if __name__ == "__main__":
    main()
