"""Glyph conditioning: the plan drawn by the world's renderer, in the tokenizer's latent space.

The canvas is encoded by the (frozen) tokenizer and the empty canvas's latent subtracted, so a token
with nothing planned on it gets exactly zero and a token with something gets what that looks like in
latent space — the plan's layout made visible to the generator, slot by slot. By default the canvas holds
the planned words only (the glyph canvas the shipped checkpoint was trained with); with `sketch` it is
the thought image: every planned shape in its colour as well, the layout conditioning of option (a) in
issue 19 (GLIGEN / GlyphControl family), so the generator sees where each shape goes and how big it is.
"""

from __future__ import annotations

import torch

from nbeval.world import Scene, render
from reference_model.tokenizer import IMAGE_SIZE, Tokenizer, to_tensor


def canvas(planned: Scene, sketch: bool = False) -> Scene:
    """What is drawn for a plan: its words, and with `sketch` its shapes too."""
    return planned if sketch else Scene(words=planned.words)


@torch.no_grad()
def glyph_tokens(planned: list[Scene], tokenizer: Tokenizer, sketch: bool = False) -> torch.Tensor:
    """(B, n_tokens, token_dim) tokens of the planned scenes' canvases (zeros where nothing is drawn)."""
    g, device = tokenizer.geometry, tokenizer.latent_mean.device
    out = torch.zeros(len(planned), g.n_tokens, g.token_dim, device=device)
    drawn = [canvas(s, sketch) for s in planned]
    rows = [i for i, s in enumerate(drawn) if s != Scene()]
    if not rows:
        return out
    canvases = [render(drawn[i], IMAGE_SIZE) for i in rows] + [render(Scene(), IMAGE_SIZE)]
    tokens = tokenizer.to_tokens(to_tensor(canvases).to(device))
    out[rows] = tokens[:-1] - tokens[-1:]
    return out
