import random

import numpy as np
import pytest

from nbeval.world import COMMON_WORDS, Scene, Shape, apply_edit, fit_text, place_shapes, render, scene_prompt
from nbeval.world.layout import shape_box, word_box, _overlaps
from nbeval.world.prompts import position_phrase


def _scene(seed: int) -> Scene:
    rng = random.Random(seed)
    words = (fit_text(rng, "HELLO WORLD", 0.08, y_range=(0.8, 0.88)),)
    specs = [("circle", "red", "medium")] * 3 + [("square", "blue", "small")] * 2
    return Scene(shapes=place_shapes(rng, specs, avoid=[word_box(w) for w in words]), words=words)


def test_json_round_trip_is_exact():
    s = _scene(1)
    assert Scene.from_json(s.to_json()) == s
    assert Scene.from_json(s.to_json()).to_json() == s.to_json()


def test_same_seed_same_pixels_different_seed_different_pixels():
    a, b, c = render(_scene(3)), render(_scene(3)), render(_scene(4))
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()


def test_render_draws_palette_colours_where_shapes_are():
    s = Scene(shapes=(Shape("square", "red", "large", 0.5, 0.5),))
    a = np.asarray(render(s, 128))
    assert tuple(a[64, 64]) == (220, 40, 40)
    assert tuple(a[5, 5]) == (255, 255, 255)


def test_layout_never_overlaps():
    for seed in range(30):
        s = _scene(seed)
        boxes = [shape_box(x) for x in s.shapes] + [word_box(w) for w in s.words]
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                assert not _overlaps(boxes[i], boxes[j], margin=0.0)
            assert all(0 <= v <= 1 for v in boxes[i])


def test_prompt_states_counts_and_text():
    p = scene_prompt(_scene(0), phrasing=0)
    assert "three red circles" in p and "two blue squares" in p and '"HELLO WORLD"' in p
    phrasings = {scene_prompt(_scene(0), phrasing=k) for k in range(4)}
    assert len(phrasings) == 4


def test_position_phrase_bins():
    assert position_phrase(0.1, 0.1) == "top left"
    assert position_phrase(0.5, 0.5) == "centre"
    assert position_phrase(0.9, 0.5) == "right"
    assert position_phrase(0.5, 0.95) == "bottom"


@pytest.mark.parametrize("op", ["add", "remove", "recolour", "move", "change_text"])
def test_edits_change_exactly_what_they_say(op):
    s = _scene(7)
    e = apply_edit(s, random.Random(0), op, vocabulary=COMMON_WORDS)
    assert e.before == s and e.instruction
    if op == "add":
        assert len(e.after.shapes) == len(s.shapes) + 1
        new = e.after.shapes[-1]
        assert new.colour in e.instruction and new.kind in e.instruction
    elif op == "remove":
        assert len(e.after.shapes) == len(s.shapes) - 1
    elif op == "recolour":
        i = int(e.target.split(":")[1])
        assert e.after.shapes[i].colour != s.shapes[i].colour and e.after.shapes[i].colour in e.instruction
        assert [x.kind for x in e.after.shapes] == [x.kind for x in s.shapes]
    elif op == "move":
        i = int(e.target.split(":")[1])
        a, b = s.shapes[i], e.after.shapes[i]
        assert position_phrase(a.x, a.y) != position_phrase(b.x, b.y)
        assert position_phrase(b.x, b.y) in e.instruction
    else:
        assert e.after.words[0].text != s.words[0].text and e.after.words[0].text in e.instruction
        assert e.after.shapes == s.shapes
    assert type(e).from_dict(e.to_dict()) == e


def test_bad_scene_values_are_refused():
    with pytest.raises(ValueError, match="unknown colour"):
        Shape("circle", "mauve", "small", 0.5, 0.5)
    with pytest.raises(ValueError, match="change_text"):
        apply_edit(Scene(shapes=_scene(0).shapes), random.Random(0), "change_text")
