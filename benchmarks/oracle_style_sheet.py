"""The contact sheet of `model=oracle_style`: the same scenes (counting prompts, shapes with words, a
character) at style severities 0–5, left to right.

    python benchmarks/oracle_style_sheet.py --out benchmarks/results/oracle_style.png
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from PIL import Image

from nbeval.world import Scene
from nbeval.world.scene import Shape, Word
from nbeval.world.styles import render_styled
from suites.counting import CountingSuite
from suites.identity import IdentitySuite


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/oracle_style.png"))
    ap.add_argument("--tile", type=int, default=192)
    args = ap.parse_args()
    scenes = [Scene.from_dict(s.truth[0]["scene"]) for s in CountingSuite().samples(3, 0)]
    scenes.append(Scene(shapes=(Shape("square", "yellow", "medium", 0.25, 0.3), Shape("circle", "purple", "small", 0.75, 0.3)),
                        words=(Word("HELLO WORLD", 0.07, 0.5, 0.72),)))
    scenes.append(Scene.from_dict(IdentitySuite().samples(1, 0)[0].truth[0]["scene"]))
    sheet = Image.new("RGB", (6 * args.tile, len(scenes) * args.tile), "white")
    for row, scene in enumerate(scenes):
        for severity in range(6):
            img = render_styled(scene, 256, severity, random.Random(f"sheet:{row}"))
            sheet.paste(img.resize((args.tile, args.tile), Image.Resampling.LANCZOS), (severity * args.tile, row * args.tile))
    sheet.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
