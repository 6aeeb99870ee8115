"""Glyph conditioning: the planned words drawn by the world's renderer, in the tokenizer's latent space.

The canvas is encoded by the (frozen) tokenizer and the empty canvas's latent subtracted, so a token
with no planned text gets exactly zero and a token with text gets what that text looks like in latent
space — the plan's text layout made visible to the generator, slot by slot.
"""

from __future__ import annotations

import torch

from nbeval.world import Scene, render
from reference_model.tokenizer import IMAGE_SIZE, Tokenizer, patchify, to_tensor


@torch.no_grad()
def glyph_tokens(planned: list[Scene], tokenizer: Tokenizer) -> torch.Tensor:
    """(B, 64, 64) glyph tokens for planned scenes (zeros where a scene plans no words)."""
    device = tokenizer.latent_mean.device
    out = torch.zeros(len(planned), 64, 64, device=device)
    rows = [i for i, s in enumerate(planned) if s.words]
    if not rows:
        return out
    canvases = [render(Scene(words=planned[i].words), IMAGE_SIZE) for i in rows] + [render(Scene(), IMAGE_SIZE)]
    tokens = patchify(tokenizer.encode(to_tensor(canvases).to(device)))
    out[rows] = tokens[:-1] - tokens[-1:]
    return out
