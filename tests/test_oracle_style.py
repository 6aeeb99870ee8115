"""`model=oracle_style`: the truth in graded other styles — the flat render at severity 0, more unlike
it at every step, the truth kept (each shape still its colour, where it was), deterministic, and an
edit chain keeping its own look (so drift against the model's own images stays at 1 while drift
against the truth's renders falls: the point of those metrics)."""

from __future__ import annotations

import colorsys
import random

import numpy as np
import pytest

from conftest import evaluate
from nbeval.adapters.base import GenRequest
from nbeval.adapters.oracle import OracleAdapter
from nbeval.world import Scene
from nbeval.world.census import REGION_TOLERANCE
from nbeval.world.scene import COLOURS
from nbeval.world.styles import SHEAR, render_styled
from suites.counting import CountingSuite


def _requests(n: int) -> list[GenRequest]:
    return [GenRequest(s.id, s.prompt, s.seed, 256, s.truth[0]) for s in CountingSuite().samples(n, 0)]


def _hue(rgb) -> float:
    return colorsys.rgb_to_hsv(*(v / 255 for v in rgb))[0]


def _hue_distance(a: float, b: float) -> float:
    return min(abs(a - b), 1 - abs(a - b))


def test_severity_zero_is_the_flat_oracle_and_each_severity_moves_further_from_it():
    reqs = _requests(6)
    flat = [r.image for r in OracleAdapter().generate(reqs)]
    styled = {sev: [r.image for r in OracleAdapter("oracle_style", style=True, severity=sev).generate(reqs)] for sev in range(6)}
    assert all(a.tobytes() == b.tobytes() for a, b in zip(flat, styled[0]))
    distance = [np.mean([np.abs(np.asarray(a, float) - np.asarray(b, float)).mean() for a, b in zip(flat, styled[sev])]) for sev in range(6)]
    assert distance[0] == 0 and all(a < b for a, b in zip(distance, distance[1:])), distance
    again = [r.image for r in OracleAdapter("oracle_style", style=True, severity=5).generate(reqs)]
    assert all(a.tobytes() == b.tobytes() for a, b in zip(again, styled[5])), "the same request draws the same bytes"
    with pytest.raises(ValueError, match="no corruption"):
        OracleAdapter(style=True, corruption="blur", severity=2)


@pytest.mark.parametrize("severity", range(1, 6))
def test_every_shape_keeps_its_colour_and_its_place(severity):
    """The median hue inside each shape (its inner half, clear of outlines and shadows) is nearest its own
    colour's; the shear moves no centre further than the census's region tolerance."""
    assert SHEAR * 0.5 <= REGION_TOLERANCE
    palette = {name: _hue(rgb) for name, rgb in COLOURS.items()}
    for s in CountingSuite().samples(8, 1):
        scene = Scene.from_dict(s.truth[0]["scene"])
        img = np.asarray(render_styled(scene, 256, severity, random.Random(s.id)), dtype=float)
        for shape in scene.shapes:
            r = shape.radius * 256 * 0.45
            x0, x1 = int(shape.x * 256 - r), int(shape.x * 256 + r)
            y0, y1 = int(shape.y * 256 - r * (0.2 if shape.kind == "triangle" else 1)), int(shape.y * 256 + r)
            hue = _hue(np.median(img[y0:y1, x0:x1].reshape(-1, 3), axis=0))
            assert min(palette, key=lambda c: _hue_distance(hue, palette[c])) == shape.colour, (severity, shape)


def test_an_edit_chain_keeps_its_look_so_only_drift_against_the_truth_falls(compose_cfg, tmp_path):
    res = evaluate(compose_cfg(["model=oracle_style", "model.severity=3", "suite=[drift]", "n=6", "suite.drift.turns=2"]), tmp_path / "out")
    m = res["suites"]["drift"]["metrics"]
    assert m["self_preservation_ssim"]["value"] >= 0.98 and m["self_drift_slope"]["value"] == pytest.approx(0, abs=1e-3)
    assert m["preservation_ssim"]["ci_high"] < m["self_preservation_ssim"]["ci_low"], "the truth's flat renders are not its look"
    assert res["models"][0]["settings"]["style"]
