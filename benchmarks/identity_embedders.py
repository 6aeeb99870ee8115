"""Identity-embedder throughput on this CPU: the default open_clip scorer against DINOv2 ViT-S/14 and an
ArcFace-R50-shaped TorchScript face embedder, both random-init at their real sizes (their cost does not
depend on the weights' values; nothing can be downloaded here), built into a temporary folder and loaded
through the real configs (`scorer=[identity_dinov2]`, `scorer=[identity_torchscript]`).

    nice -n 10 python benchmarks/identity_embedders.py --n 96 --out benchmarks/results/identity_embedders.md

Per backend, after a warm-up batch: `embed` (backbone.embed_images on the suite's images alone) and
`scorer` (scorer.read as benchmarks/scorers.py times it: each image is another identity, so its reference
render is embedded too; in a run the k turns of one identity share it) as wall-clock images/s (what this
machine gave at the time), and `embed` as CPU time per image on one thread (the cost, whatever else runs).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nbeval.adapters.base import GenRequest
from nbeval.adapters.oracle import OracleAdapter
from nbeval.scorers.embeddings import DINOV2_PREPROCESS
from scorers import cpu_model, images_per_second  # benchmarks/scorers.py: this script's directory is on sys.path


class IBlock(nn.Module):
    """ArcFace's IResNet basic block (insightface arcface_torch): BN-conv-BN-PReLU-conv(stride)-BN + shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.PReLU(cout),
                                  nn.Conv2d(cout, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))
        self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) if stride > 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.short(x)


def iresnet50(dim: int = 512) -> nn.Module:
    """IResNet-50 on 112² faces: 3×3 stem at full resolution, stages of [3, 4, 14, 3] blocks at widths
    64-512 (each halving the side), BN, flatten 512×7×7, FC to `dim`, BN."""
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64)]
    cin = 64
    for cout, blocks in zip((64, 128, 256, 512), (3, 4, 14, 3)):
        layers += [IBlock(cin, cout, 2)] + [IBlock(cout, cout, 1) for _ in range(blocks - 1)]
        cin = cout
    layers += [nn.BatchNorm2d(512), nn.Flatten(), nn.Linear(512 * 7 * 7, dim), nn.BatchNorm1d(dim)]
    return nn.Sequential(*layers)


def build(root: Path) -> dict[str, tuple[str, list[str]]]:
    """scorer config → (backbone, config overrides) of each new backend, written under `root`."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    # facebook/dinov2-small's shape: 22 M parameters, 37² position embeddings (interpolated to the 16² patches of a 224 crop)
    Dinov2Model(Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, patch_size=14, image_size=518)).save_pretrained(root / "dinov2-small")
    BitImageProcessor(**DINOV2_PREPROCESS).save_pretrained(root / "dinov2-small")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.trace(_method)?` is deprecated", category=FutureWarning)
        torch.jit.trace(iresnet50().eval(), torch.zeros(1, 3, 112, 112)).save(str(root / "arcface-r50.pt"))
    return {
        "identity_dinov2": ("DINOv2 ViT-S/14 (random init), 224² crop", [f"scorer.identity.path={root / 'dinov2-small'}"]),
        "identity_torchscript": ("ArcFace IResNet-50 (random init, traced), 112²", [f"scorer.identity.path={root / 'arcface-r50.pt'}"]),
    }


def gflops(embed, image) -> float:
    """Floating-point operations of embedding one image (every torch op, TorchScript's included)."""
    with FlopCounterMode(display=False) as counter:
        embed([image])
    return counter.get_total_flops() / 1e9


def rate(fn, images: list, truths: list, batch: int) -> float:
    """Images/s of wall time over all batches after the first (the warm-up)."""
    fn(images[:batch], truths[:batch])
    return images_per_second(fn, images, truths, batch)


def cpu_ms(embed, images: list, batch: int) -> float:
    """CPU ms per embedded image on one torch thread, after a warm-up batch: the cost, which a shared
    machine does not inflate (with more threads, waiting threads spin and count as CPU time)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        embed(images[:batch])
        t0 = time.process_time()
        for i in range(batch, len(images), batch):
            embed(images[i : i + batch])
        return 1000 * (time.process_time() - t0) / (len(images) - batch)
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=96)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    cpu = cpu_model()
    lines = [
        "# Identity embedders: throughput",
        "",
        f"Machine: {os.cpu_count()} cores ({cpu}), no GPU; torch threads {torch.get_num_threads()}; load average "
        f"{os.getloadavg()[0]:.1f} at start. A CPU training job shared the machine at normal priority while this ran at nice 10:",
        "the images/s are lower bounds; the CPU ms per image on one thread (process time) is the cost.",
        f"Command: `nice -n 10 python benchmarks/identity_embedders.py --n {args.n} --batch {args.batch} --out {args.out}`",
        f"Images: {args.n} oracle renders of the identity suite (256 px), batches of {args.batch}, after a warm-up batch.",
        "",
        f"| scorer config | backbone | GFLOPs / image | embed: CPU ms / image, 1 thread | embed: images/s, {torch.get_num_threads()} threads | scorer: images/s, {torch.get_num_threads()} threads | load s |",
        "|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        runs = {"identity": ("nbclip-world (open_clip, shipped), 128²", []), **build(Path(tmp))}
        for config, (desc, overrides) in runs.items():
            with initialize_config_module(config_module="nbeval.conf", version_base="1.3"):
                cfg = compose("config", overrides=["suite=[identity]", f"scorer=[{config}]", *overrides])
            suite = instantiate(cfg.suite.identity)
            samples = suite.samples(args.n + args.batch, 0)
            reqs = [GenRequest(s.id, s.prompt, s.seed, suite.image_size, s.truth[0]) for s in samples]
            images = [r.image for r in OracleAdapter().generate(reqs)]
            truths = [suite.scorer_truth(s, 0, "identity") for s in samples]
            t0 = time.perf_counter()
            scorer = instantiate(cfg.scorer.identity)
            load = time.perf_counter() - t0
            embed = scorer.backbone.embed_images
            flops = gflops(embed, images[0])
            embed_wall, score_wall = (rate(fn, images, truths, args.batch) for fn in (lambda ims, _: embed(ims), scorer.read))
            lines.append(f"| {config} | {desc} | {flops:.2f} | {cpu_ms(embed, images, args.batch):.1f} | {embed_wall:.1f} | {score_wall:.1f} | {load:.1f} |")
            print(lines[-1], flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
