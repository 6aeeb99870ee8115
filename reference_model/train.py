"""Train the reference model on the world, on the fly: tokenizer → decoder → planner → generator → export.

Each stage checkpoints to `out_dir/<stage>.pt` (weights, optimiser, step, loss history, wall time) and
resumes from it, so a killed background job loses at most `ckpt_every` steps. Data for step k comes from
a generator seeded by (seed, stage, k), so a resumed run sees the same data as an uninterrupted one.
`export` writes the shipped safetensors checkpoint (fp16) and the numbers its model card needs.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from nbeval.world import render
from reference_model import data
from reference_model.tokenizer import IMAGE_SIZE, Geometry, Tokenizer, to_tensor

STAGES = ("tokenizer", "decoder", "planner", "generator")


def lr_at(step: int, cfg: DictConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def load_tokenizer(out_dir: Path, device: str) -> Tokenizer:
    ckpt = out_dir / "tokenizer.pt"
    if not ckpt.exists():
        raise FileNotFoundError(f"{ckpt} missing: train the tokenizer stage first")
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    tok = Tokenizer(Geometry.from_dict(saved["config"].get("geometry")))
    tok.load_state_dict(saved["model"])
    return tok.to(device).eval().requires_grad_(False)


class TokenizerStage:
    name = "tokenizer"

    def __init__(self, cfg: DictConfig, out_dir: Path, device: str) -> None:
        self.model = Tokenizer(Geometry.from_dict(cfg.preset.tokenizer.get("geometry"))).to(device)
        self.device = device

    def step_loss(self, rng: random.Random, cfg: DictConfig) -> tuple[torch.Tensor, dict]:
        images = [render(data.random_scene(rng)[0], IMAGE_SIZE) for _ in range(cfg.batch)]
        return self.model.loss(to_tensor(images).to(self.device), kl_weight=cfg.kl_weight)

    def finish(self, rng: random.Random) -> None:
        images = [render(data.random_scene(rng)[0], IMAGE_SIZE) for _ in range(256)]
        self.model.set_latent_stats(to_tensor(images).to(self.device))


class DecoderStage:
    """The tokenizer's decoder fine-tuned on text-heavy scenes with its encoder frozen: sharper strokes
    without moving the latent space, so it can run while (or after) the generator trains on it."""

    name = "decoder"

    def __init__(self, cfg: DictConfig, out_dir: Path, device: str) -> None:
        self.model = load_tokenizer(out_dir, device)
        self.model.decoder.requires_grad_(True)
        self.device = device

    def step_loss(self, rng: random.Random, cfg: DictConfig) -> tuple[torch.Tensor, dict]:
        images = [render(data.random_scene(rng, rng.choice(("text", "mixed")))[0], IMAGE_SIZE) for _ in range(cfg.batch)]
        return self.model.loss(to_tensor(images).to(self.device), kl_weight=cfg.kl_weight, dark_weight=cfg.dark_weight)

    def finish(self, rng: random.Random) -> None:
        pass


class PlannerStage:
    name = "planner"

    def __init__(self, cfg: DictConfig, out_dir: Path, device: str) -> None:
        from reference_model.planner import Planner

        self.model = Planner().to(device)
        self.device = device

    def step_loss(self, rng: random.Random, cfg: DictConfig) -> tuple[torch.Tensor, dict]:
        examples = [data.example(rng, cfg.edit_rate) for _ in range(cfg.batch)]
        loss = self.model.loss(examples, self.device)
        return loss, {"ce": loss.item()}

    def finish(self, rng: random.Random) -> None:
        pass


class GeneratorStage:
    name = "generator"

    def __init__(self, cfg: DictConfig, out_dir: Path, device: str) -> None:
        from reference_model.generator import Generator

        self.tokenizer = load_tokenizer(out_dir, device)
        self.model = Generator(self.tokenizer.geometry, sketch_px=cfg.preset.generator.get("sketch_px")).to(device)
        self.device = device

    def step_loss(self, rng: random.Random, cfg: DictConfig) -> tuple[torch.Tensor, dict]:
        examples = [data.example(rng, cfg.edit_rate) for _ in range(cfg.batch)]
        batch = self.model.training_batch(examples, self.tokenizer, torch.Generator().manual_seed(rng.getrandbits(63)), self.device)
        return self.model.loss(batch, cfg.diffusion_batch_mul)

    def finish(self, rng: random.Random) -> None:
        pass


def train_stage(stage_cls, cfg: DictConfig, out_dir: Path) -> None:
    scfg = cfg.preset[stage_cls.name]
    device = cfg.preset.device
    stage = stage_cls(cfg, out_dir, device)
    model = stage.model
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=scfg.lr, betas=(0.9, 0.95), weight_decay=0.01)
    ckpt_path = out_dir / f"{stage_cls.name}.pt"
    state = {"step": 0, "history": [], "wall": 0.0, "images": 0, "done": False}
    if ckpt_path.exists():
        saved = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        state = saved["state"]
        if state["step"] >= scfg.steps:
            print(f"[{stage_cls.name}] already trained ({state['step']} steps); delete {ckpt_path} to retrain, or ask for more steps")
            return
        print(f"[{stage_cls.name}] resuming at step {state['step']}")

    def save(done: bool = False) -> None:
        state["done"] = done
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "state": state, "config": OmegaConf.to_container(scfg)}, tmp)
        tmp.replace(ckpt_path)

    model.train()
    bar = tqdm(range(state["step"], scfg.steps), initial=state["step"], total=scfg.steps, desc=stage_cls.name)
    t_last = time.perf_counter()
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, scfg)
        loss, parts = stage.step_loss(random.Random(f"{cfg.seed}:{stage_cls.name}:{step}"), scfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        now = time.perf_counter()
        state["wall"] += now - t_last
        t_last = now
        state["step"] = step + 1
        state["images"] += scfg.batch
        if step % scfg.log_every == 0 or step + 1 == scfg.steps:
            state["history"].append({"step": step + 1, "loss": loss.item(), **parts, "images": state["images"], "wall": round(state["wall"], 1)})
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % scfg.ckpt_every == 0:
            save()
    model.eval()
    stage.finish(random.Random(f"{cfg.seed}:{stage_cls.name}:finish"))
    save(done=True)
    print(f"[{stage_cls.name}] done: {state['step']} steps, {state['images']} images, {state['wall'] / 60:.1f} min")


@hydra.main(version_base=None, config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = {c.name: c for c in (TokenizerStage, DecoderStage, PlannerStage, GeneratorStage)}
    todo = list(STAGES) if cfg.stage == "all" else [] if cfg.stage == "export" else [cfg.stage]
    unknown = set(todo) - set(classes)
    if unknown or cfg.stage not in (*STAGES, "all", "export"):
        raise SystemExit(f"unknown stage {cfg.stage!r}; expected one of {(*STAGES, 'export', 'all')}")
    for name in todo:
        train_stage(classes[name], cfg, out_dir)
    if cfg.stage in ("all", "export"):
        from reference_model.export import export

        export(cfg, out_dir)


if __name__ == "__main__":
    main()
