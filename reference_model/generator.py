"""The generator: one transformer over [prompt bytes | plan | image tokens], MAR-style masked generation.

- Image tokens are the tokenizer's latents patched (its `Geometry`): for the shipped checkpoint 16×16×16
  latents patched 2×2, 64 tokens of 64 numbers.
- The prefix (prompt bytes, then one token per planned word, character and object) attends only to
  itself, so at sampling it is computed once per image and cached; image tokens attend to everything.
- Planned positions and image-token positions share one Fourier embedding, so an image token can find
  "the object planned here" by attention; the thought image (`glyph.py`) is added to the token slots.
- Training: a random share of tokens (cosine schedule) is masked and the per-token diffusion head learns
  them from the transformer's output (MAR's diffusion loss). The plan, the thought image, its words, or
  the whole condition are dropped at random, which gives the planner-off, thought-off and glyph-off
  ablations and the unconditional branch of classifier-free guidance from the same weights.
- Sampling: tokens revealed in a random order, more per step (cosine), each drawn by the head.
  Editing is the same loop with the kept tokens revealed from the start.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
from torch import nn

from nbeval.world import Scene, render
from nbeval.world.render import text_width
from reference_model import plan
from reference_model.data import Example
from reference_model.diffloss import DiffusionHead, RegressionHead
from reference_model.glyph import thought_tokens
from reference_model.tokenizer import IMAGE_SIZE, Geometry, Tokenizer, to_tensor
from reference_model.transformer import Block, fourier_xy

MAX_PROMPT_BYTES = 128
MAX_PREFIX = 1 + MAX_PROMPT_BYTES + 96
BYTE_BASE, PLAN_BASE = 1, 257  # index 0 of the embedding table is padding
TABLE = PLAN_BASE + len(plan.VOCAB)
TYPE_START, TYPE_PROMPT, TYPE_PLAN, TYPE_IMAGE = range(4)


@dataclass
class Prefix:
    """A padded batch of prefixes: up to 4 embedding ids per position, an optional (x, y) and a type."""

    ids: torch.Tensor  # (B, P, 4) long, 0 = nothing
    xy: torch.Tensor  # (B, P, 2) float
    has_xy: torch.Tensor  # (B, P) bool
    types: torch.Tensor  # (B, P) long
    pad: torch.Tensor  # (B, P) bool, True = padding

    def to(self, device: str) -> Prefix:
        return Prefix(*(t.to(device) for t in (self.ids, self.xy, self.has_xy, self.types, self.pad)))


def prefix_items(prompt: str | None, planned: Scene | None) -> list[tuple[list[int], tuple[float, float] | None, int]]:
    """The prefix of one image: a start token, the prompt's bytes, and the plan's items with positions."""
    items: list = [([PLAN_BASE + plan.PLAN], None, TYPE_START)]
    if prompt is not None:
        items += [([BYTE_BASE + b], None, TYPE_PROMPT) for b in prompt.encode("utf-8")[:MAX_PROMPT_BYTES]]
    if planned is not None:
        for w in planned.words:
            items.append(([PLAN_BASE + plan.WORD, PLAN_BASE + plan.ID[f"h:{plan.height_bin(w.height)}"]], (w.x, w.y), TYPE_PLAN))
            width, text = text_width(w), w.text.upper()
            for i, c in enumerate(text):
                if c in plan.CHARS and c != " ":
                    cx = w.x - width / 2 + (i + 0.5) * width / len(text)
                    items.append(([PLAN_BASE + plan.ID[f"char:{c}"]], (cx, w.y), TYPE_PLAN))
        for s in planned.shapes:
            ids = [plan.OBJ, plan.ID[f"kind:{s.kind}"], plan.ID[f"colour:{s.colour}"], plan.ID[f"size:{s.size}"]]
            items.append(([PLAN_BASE + i for i in ids], (s.x, s.y), TYPE_PLAN))
    return items[:MAX_PREFIX]


def collate_prefix(batch: list[list]) -> Prefix:
    b, p = len(batch), max(map(len, batch))
    ids = torch.zeros(b, p, 4, dtype=torch.long)
    xy = torch.zeros(b, p, 2)
    has_xy = torch.zeros(b, p, dtype=torch.bool)
    types = torch.zeros(b, p, dtype=torch.long)
    pad = torch.ones(b, p, dtype=torch.bool)
    for i, items in enumerate(batch):
        for j, (tok, pos, typ) in enumerate(items):
            ids[i, j, : len(tok)] = torch.tensor(tok)
            if pos is not None:
                xy[i, j] = torch.tensor(pos)
                has_xy[i, j] = True
            types[i, j], pad[i, j] = typ, False
    return Prefix(ids, xy, has_xy, types, pad)


def token_centres(grid: int) -> torch.Tensor:
    idx = torch.arange(grid * grid)
    return torch.stack([(idx % grid + 0.5) / grid, (idx // grid + 0.5) / grid], dim=-1)


class Generator(nn.Module):
    def __init__(self, geometry: Geometry = Geometry(), dim: int = 192, depth: int = 6, heads: int = 6, head_width: int = 256, head_depth: int = 3, sketch_px: int | None = None) -> None:
        super().__init__()
        self.sketch_px = sketch_px  # the thought image's shapes are drawn at this size (None: words only)
        self.n_tokens, self.token_dim = geometry.n_tokens, geometry.token_dim
        self.table = nn.Embedding(TABLE, dim, padding_idx=0)
        self.types = nn.Embedding(4, dim)
        self.order = nn.Embedding(MAX_PREFIX, dim)
        self.where = nn.Linear(64, dim)  # Fourier (x, y) → dim, shared by plan items and image tokens
        self.image_pos = nn.Parameter(torch.zeros(self.n_tokens, dim))
        self.token_in = nn.Linear(self.token_dim, dim)
        self.glyph_in = nn.Linear(self.token_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = DiffusionHead(self.token_dim, dim, head_width, head_depth)
        self.regression_head = RegressionHead(self.token_dim, dim, head_width)
        self.register_buffer("centres", token_centres(geometry.grid), persistent=False)
        nn.init.normal_(self.image_pos, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    # --- the two halves of one forward pass -------------------------------------------------------
    def embed_prefix(self, p: Prefix) -> torch.Tensor:
        x = self.table(p.ids).sum(2) + self.types(p.types) + self.order(torch.arange(p.ids.shape[1], device=p.ids.device))
        return x + p.has_xy[..., None] * self.where(fourier_xy(p.xy))

    def embed_image(self, tokens: torch.Tensor, revealed: torch.Tensor, glyphs: torch.Tensor) -> torch.Tensor:
        x = torch.where(revealed[..., None], self.token_in(tokens), self.mask_token)
        return x + self.glyph_in(glyphs) + self.image_pos + self.where(fourier_xy(self.centres)) + self.types.weight[TYPE_IMAGE]

    def forward(self, p: Prefix, tokens: torch.Tensor, revealed: torch.Tensor, glyphs: torch.Tensor) -> torch.Tensor:
        """Training pass over the whole sequence; returns the image tokens' outputs (B, n_tokens, dim)."""
        x = torch.cat([self.embed_prefix(p), self.embed_image(tokens, revealed, glyphs)], dim=1)
        n_pre = p.pad.shape[1]
        keys_ok = torch.cat([~p.pad, torch.ones_like(revealed)], dim=1)  # (B, L)
        is_image = torch.arange(x.shape[1], device=x.device) >= n_pre
        allowed = keys_ok[:, None, None, :] & (is_image[None, None, :, None] | ~is_image[None, None, None, :])
        for block in self.blocks:
            x, _ = block(x, allowed)
        return self.norm(x[:, n_pre:])

    @torch.no_grad()
    def prefix_cache(self, p: Prefix) -> list:
        """Keys and values of the prefix at every layer: computed once per image."""
        x = self.embed_prefix(p)
        allowed = (~p.pad)[:, None, None, :]
        cache = []
        for block in self.blocks:
            x, kv = block(x, allowed)
            cache.append(kv)
        return cache

    @torch.no_grad()
    def image_pass(self, cache: list, pad: torch.Tensor, tokens: torch.Tensor, revealed: torch.Tensor, glyphs: torch.Tensor) -> torch.Tensor:
        x = self.embed_image(tokens, revealed, glyphs)
        allowed = torch.cat([~pad, torch.ones_like(revealed)], dim=1)[:, None, None, :]
        for block, kv in zip(self.blocks, cache):
            x, _ = block(x, allowed, past=kv)
        return self.norm(x)

    # --- training ---------------------------------------------------------------------------------
    @torch.no_grad()
    def training_batch(self, examples: list[Example], tokenizer: Tokenizer, gen: torch.Generator, device: str, p_drop_plan: float = 0.1, p_drop_thought: float = 0.1, p_drop_glyph: float = 0.1, p_drop_all: float = 0.1) -> dict:
        """Images rendered from the plan's own (quantised) scene, so plan, thought image and pixels agree."""
        rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=gen)))
        scenes = [plan.quantise(e.scene) for e in examples]
        target = tokenizer.to_tokens(to_tensor([render(s, IMAGE_SIZE) for s in scenes]).to(device))
        items, drawn = [], []
        for e, s in zip(examples, scenes):
            r = rng.random()
            if r < p_drop_all:  # unconditional: classifier-free guidance's other branch
                items.append(prefix_items(None, None))
                drawn.append(Scene())
            elif r < p_drop_all + p_drop_plan:  # prompt only: the planner-off model
                items.append(prefix_items(e.prompt, None))
                drawn.append(Scene())
            else:
                items.append(prefix_items(e.prompt, s))
                r = rng.random()
                drawn.append(Scene() if r < p_drop_thought else Scene(shapes=s.shapes) if r < p_drop_thought + p_drop_glyph else s)
        glyphs = thought_tokens(drawn, tokenizer, self.sketch_px)
        # MaskGIT/MAR cosine schedule over the share of masked tokens; at least one token masked.
        u = torch.rand(len(examples), generator=gen)
        n_mask = (torch.cos(u * math.pi / 2) * self.n_tokens).ceil().clamp(1, self.n_tokens)
        ranks = torch.rand(len(examples), self.n_tokens, generator=gen).argsort(1).argsort(1)
        revealed = ranks >= n_mask[:, None]
        return {"prefix": collate_prefix(items).to(device), "target": target, "glyphs": glyphs, "revealed": revealed.to(device)}

    def loss(self, batch: dict, diffusion_batch_mul: int = 4) -> tuple[torch.Tensor, dict]:
        z = self(batch["prefix"], batch["target"], batch["revealed"], batch["glyphs"])
        masked = ~batch["revealed"]
        z_m, t_m = z[masked], batch["target"][masked]
        diff = self.head.loss(t_m.repeat(diffusion_batch_mul, 1), z_m.repeat(diffusion_batch_mul, 1))
        reg = self.regression_head.loss(t_m, z_m.detach())  # the ablation head, on the same features
        return diff + reg, {"diffusion": diff.item(), "regression": reg.item()}

    # --- sampling ---------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, prefix: Prefix, glyphs: torch.Tensor, gens: list[torch.Generator], known: torch.Tensor | None = None, keep: torch.Tensor | None = None, steps: int = 8, head_steps: int = 10, temperature: float = 1.0, cfg_scale: float = 1.0, head: str = "diffusion") -> torch.Tensor:
        """Tokens (B, n_tokens, token_dim); `keep` (B, n_tokens) marks tokens of `known` to keep (editing).

        Every random draw of image i comes from `gens[i]`, so an image does not depend on its batch."""
        b, device = glyphs.shape[0], glyphs.device
        tokens = known.clone() if known is not None else torch.zeros(b, self.n_tokens, self.token_dim, device=device)
        revealed = keep.clone() if keep is not None else torch.zeros(b, self.n_tokens, dtype=torch.bool, device=device)
        cache = self.prefix_cache(prefix)
        guided = cfg_scale != 1.0
        if guided:
            null = collate_prefix([prefix_items(None, None)] * b).to(device)
            null_cache = self.prefix_cache(null)
        sampler = self.head if head == "diffusion" else self.regression_head
        # Each image's own random order over its unknown tokens, revealed on a cosine schedule.
        orders = [torch.randperm(self.n_tokens, generator=g) for g in gens]
        orders = [o[~revealed[i].cpu()[o]] for i, o in enumerate(orders)]
        done = [0] * b
        for s in range(steps):
            left = [math.floor(len(o) * math.cos(math.pi / 2 * (s + 1) / steps)) for o in orders]
            picks = [o[d : len(o) - k] for o, d, k in zip(orders, done, left)]
            done = [len(o) - k for o, k in zip(orders, left)]
            rows = torch.cat([torch.full((len(pk),), i, dtype=torch.long) for i, pk in enumerate(picks)])
            cols = torch.cat(picks).long()
            if len(cols) == 0:
                continue
            z = self.image_pass(cache, prefix.pad, tokens, revealed, glyphs)[rows, cols]
            z_u = self.image_pass(null_cache, null.pad, tokens, revealed, torch.zeros_like(glyphs))[rows, cols] if guided else None
            noise = torch.cat([torch.randn(len(pk), self.token_dim, generator=g) for pk, g in zip(picks, gens)]).to(device) * temperature
            tokens[rows, cols] = sampler.sample(z, noise, head_steps, cfg_scale, z_u)
            revealed[rows, cols] = True
        return tokens
