import random

import numpy as np
import pytest

from nbeval.adapters.base import EditRequest, GenRequest
from nbeval.adapters.corruptions import CORRUPTIONS, TURN_CORRUPTIONS
from nbeval.adapters.folder import FolderAdapter
from nbeval.adapters.oracle import OracleAdapter
from nbeval.world import COMMON_WORDS, Scene, apply_edit, fit_text, place_shapes, render
from nbeval.world.characters import Character, Identity
from nbeval.world.layout import word_box


def _scene() -> Scene:
    """Three circles, a line of text and a character: something for every corruption to damage."""
    rng = random.Random(0)
    words = (fit_text(rng, "OPEN CAFE", 0.08, y_range=(0.8, 0.85)),)
    character = Character(Identity("round", "green", "wide", "hat", "blue"), "small", 0.15, 0.25)
    shapes = place_shapes(rng, [("circle", "red", "medium")] * 3, avoid=[word_box(w) for w in words] + [character.box()])
    return Scene(shapes=shapes, words=words, characters=(character.to_dict(),))


def _req(scene: Scene, seed: int = 1) -> GenRequest:
    return GenRequest("s-1", "p", seed, 128, {"scene": scene.to_dict()})


def test_oracle_renders_the_truth_exactly():
    (r,) = OracleAdapter().generate([_req(_scene())])
    assert r.error is None and r.image.tobytes() == render(_scene(), 128).tobytes()


@pytest.mark.parametrize("corruption", [c for c in CORRUPTIONS if c not in TURN_CORRUPTIONS])
def test_corruptions_are_deterministic_graded_and_off_at_zero(corruption):
    clean = np.asarray(render(_scene(), 128), dtype=float)
    zero = OracleAdapter(corruption=corruption, severity=0).generate([_req(_scene())])[0].image
    assert np.array_equal(np.asarray(zero, dtype=float), clean)
    diffs = []
    for sev in (1, 3, 5):
        a = OracleAdapter(corruption=corruption, severity=sev).generate([_req(_scene())])[0].image
        b = OracleAdapter(corruption=corruption, severity=sev).generate([_req(_scene())])[0].image
        assert a.tobytes() == b.tobytes()
        diffs.append(np.abs(np.asarray(a, dtype=float) - clean).mean())
    assert 0 < diffs[0] <= diffs[2]


def test_drift_damage_grows_with_the_turn_and_spares_the_first_image():
    clean = np.asarray(render(_scene(), 128), dtype=float)
    model = OracleAdapter(corruption="drift", severity=2)
    first = model.generate([_req(_scene())])[0].image
    assert np.array_equal(np.asarray(first, dtype=float), clean)
    diffs = [
        np.abs(np.asarray(model.edit([EditRequest("s-1", t, "p", ("x",) * t, (), 0, 128, {"scene": _scene().to_dict()})])[0].image, dtype=float) - clean).mean()
        for t in (1, 2, 4)
    ]
    assert 0 < diffs[0] < diffs[1] < diffs[2]


def test_fingerprint_tracks_settings():
    assert OracleAdapter().fingerprint == OracleAdapter().fingerprint
    assert OracleAdapter(corruption="blur", severity=1).fingerprint != OracleAdapter(corruption="blur", severity=2).fingerprint


def test_missing_truth_is_a_row_error_not_a_crash():
    (r,) = OracleAdapter().generate([GenRequest("s", "p", 0, 64, {})])
    assert r.image is None and "needs a scene" in r.error


def test_edits_render_the_turns_truth_and_folder_finds_turn_files(tmp_path):
    e = apply_edit(_scene(), random.Random(2), "recolour", COMMON_WORDS)
    first = render(_scene(), 128)
    req = EditRequest("s-1", 1, "p", (e.instruction,), (first,), 1, 128, {"scene": e.after.to_dict()})
    (r,) = OracleAdapter().edit([req])
    assert r.image.tobytes() == render(e.after, 128).tobytes()
    r.image.save(tmp_path / "s-1_turn1.png")
    first.save(tmp_path / "s-1.png")
    folder = FolderAdapter(str(tmp_path))
    assert folder.edit([req])[0].image.tobytes() == r.image.tobytes()
    assert folder.generate([_req(_scene())])[0].image.tobytes() == first.tobytes()


def test_folder_fingerprint_changes_when_images_change(tmp_path):
    render(_scene(), 64).save(tmp_path / "a.png")
    before = FolderAdapter(str(tmp_path)).fingerprint
    render(Scene(), 64).save(tmp_path / "b.png")
    assert FolderAdapter(str(tmp_path)).fingerprint != before
    with pytest.raises(FileNotFoundError, match="model.path"):
        FolderAdapter(str(tmp_path / "nope"))
