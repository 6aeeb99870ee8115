"""Filmstrips of multi-turn samples: each turn's truth above what the model made of it."""

from __future__ import annotations

import json
from collections.abc import Callable

import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from nbeval.world import Scene, render


def filmstrips(picks: list[tuple[str, str]], samples: pd.DataFrame, generations: pd.DataFrame, image: Callable[[str], Image.Image], tile: int = 112) -> Image.Image:
    """One strip per (sample id, title) in `picks`, in order; a missing generation stays blank."""
    by_id = {r.sample_id: r for r in samples.itertuples()}
    shas = {(r.sample_id, r.turn): r.image_sha256 for r in generations.itertuples() if isinstance(r.image_sha256, str)}
    cols = 1 + max(len(json.loads(by_id[sid].turns)) for sid, _ in picks)
    strip = Image.new("RGB", (cols * tile, len(picks) * (2 * tile + 28)), "white")
    draw, font = ImageDraw.Draw(strip), ImageFont.load_default()
    for row, (sid, title) in enumerate(picks):
        sample = by_id[sid]
        truth, turns = json.loads(sample.truth), json.loads(sample.turns)
        y = row * (2 * tile + 28)
        draw.text((2, y + 2), f"{sid}  {title}", fill="black", font=font)
        for t in range(len(truth)):
            x = t * tile
            strip.paste(render(Scene.from_dict(truth[t]["scene"]), tile - 4), (x + 2, y + 14))
            sha = shas.get((sid, t))
            if sha:
                strip.paste(image(sha).resize((tile - 4, tile - 4)), (x + 2, y + 14 + tile))
            draw.text((x + 2, y + 16 + 2 * tile), ("prompt" if t == 0 else turns[t - 1])[:20], fill=(90, 90, 90), font=font)
    return strip
