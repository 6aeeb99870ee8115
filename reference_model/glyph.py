"""The thought image: the plan drawn by the world's renderer, in the tokenizer's latent space.

Before any image token is drawn, the model draws its plan as a picture (issue 19, option (a): layout
conditioning in the GLIGEN / GlyphControl family): every planned shape as a coarse silhouette in its
colour — the shapes rendered at `sketch_px` and blown up without smoothing, so the generator learns
where each shape goes, how big and which colour, and must still draw it — and the planned words as
crisp glyphs on top. The canvas is encoded by the (frozen) tokenizer and the empty canvas's latent
subtracted, so a token with nothing planned on it gets exactly zero: the layout made visible to the
generator slot by slot. A checkpoint trained before the thought image (`sketch_px` None) draws the
words only: the glyph canvas it was trained with.
"""

from __future__ import annotations

import torch
from PIL import Image, ImageChops

from nbeval.world import Scene, render
from nbeval.world.scene import BACKGROUND
from reference_model.tokenizer import IMAGE_SIZE, Tokenizer, to_tensor


def thought_image(planned: Scene, sketch_px: int | None = None) -> Image.Image:
    """The picture of a plan: coarse shapes (with `sketch_px`) under its words, at the model's size."""
    words = render(Scene(words=planned.words), IMAGE_SIZE)
    if sketch_px is None or not planned.shapes:
        return words
    shapes = render(Scene(shapes=planned.shapes), sketch_px).resize(words.size, Image.Resampling.NEAREST)
    ink = ImageChops.difference(words, Image.new("RGB", words.size, BACKGROUND)).convert("L").point(lambda v: 255 if v else 0)
    return Image.composite(words, shapes, ink)


@torch.no_grad()
def thought_tokens(planned: list[Scene], tokenizer: Tokenizer, sketch_px: int | None = None) -> torch.Tensor:
    """(B, n_tokens, token_dim) tokens of the plans' thought images (zeros where nothing is drawn)."""
    g, device = tokenizer.geometry, tokenizer.latent_mean.device
    out = torch.zeros(len(planned), g.n_tokens, g.token_dim, device=device)
    rows = [i for i, s in enumerate(planned) if s.words or (sketch_px and s.shapes)]
    if not rows:
        return out
    canvases = [thought_image(planned[i], sketch_px) for i in rows] + [render(Scene(), IMAGE_SIZE)]
    tokens = tokenizer.to_tokens(to_tensor(canvases).to(device))
    out[rows] = tokens[:-1] - tokens[-1:]
    return out
