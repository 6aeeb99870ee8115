"""Export the trained stages as the shipped checkpoint: one safetensors file (fp16, every part), a JSON
of what produced it (preset, steps, images seen, wall time, hardware, loss history) and a loss plot.
The model card (`card.py`) adds the quality figures measured through nbeval itself."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file

from reference_model import CHECKPOINTS

PARTS = ("tokenizer", "planner", "generator")
# The tokenizer ships with its fine-tuned decoder (same encoder, same latent space) when there is one.
SOURCES = {"tokenizer": ("decoder", "tokenizer"), "planner": ("planner",), "generator": ("generator",)}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{_cpu_name()}, {torch.get_num_threads()} threads of {os.cpu_count()} CPUs"


def plot_losses(histories: dict[str, list[dict]], path: Path) -> None:
    from nbeval.plots import plt

    histories = {name: hist for name, hist in histories.items() if hist}  # a stage of 0 steps has no curve
    fig, axes = plt.subplots(1, len(histories), figsize=(4 * len(histories), 3.2), squeeze=False)
    for ax, (name, hist) in zip(axes[0], histories.items()):
        ax.plot([h["images"] for h in hist], [h["loss"] for h in hist], lw=1)
        ax.set_title(f"{name} loss")
        ax.set_xlabel("images seen")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def export(cfg: DictConfig, out_dir: Path) -> Path:
    tensors, stages = {}, {}
    for part in PARTS:
        weights_from = next(s for s in SOURCES[part] if (out_dir / f"{s}.pt").exists() or s == SOURCES[part][-1])
        for stage in SOURCES[part]:
            if not (out_dir / f"{stage}.pt").exists():
                continue
            ckpt = torch.load(out_dir / f"{stage}.pt", map_location="cpu", weights_only=False)
            if not ckpt["state"]["done"] and not cfg.unfinished:
                raise SystemExit(f"stage {stage} is not finished ({ckpt['state']['step']} steps); resume training first (or export a snapshot: unfinished=true)")
            if stage == weights_from:
                for k, v in ckpt["model"].items():
                    tensors[f"{part}.{k}"] = v.half().contiguous() if v.is_floating_point() else v.contiguous()
            st = ckpt["state"]
            stages[stage] = {"steps": st["step"], "finished": st["done"], "images": st["images"], "wall_minutes": round(st["wall"] / 60, 1), "config": ckpt["config"], "history": st["history"]}
    CHECKPOINTS.mkdir(exist_ok=True)
    path = CHECKPOINTS / f"{cfg.export_name}.safetensors"
    save_file(tensors, str(path))
    meta = {
        "name": cfg.export_name,
        "preset": cfg.preset.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "bytes": path.stat().st_size,
        # per stage: what it trained (the decoder stage trains the tokenizer's decoder only)
        "parameters": {part: sum(v.numel() for k, v in tensors.items() if k.startswith(prefix)) for part, prefix in (("tokenizer", "tokenizer."), ("decoder", "tokenizer.decoder."), ("planner", "planner."), ("generator", "generator."))},
        "hardware": hardware(cfg.preset.device),
        "torch": torch.__version__,
        "seed": cfg.seed,
        "notes": cfg.get("notes") or "",
        "stages": stages,
        "train_config": OmegaConf.to_container(cfg.preset),
    }
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    plot_losses({p: s["history"] for p, s in stages.items()}, CHECKPOINTS / f"{cfg.export_name}-loss.png")
    print(f"exported {path} ({meta['bytes'] / 1e6:.1f} MB, sha256 {meta['sha256'][:12]})")
    return path
