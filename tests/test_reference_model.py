"""The shipped reference checkpoint: deterministic for a seed (golden image), usable through nbeval,
editing keeps what an edit did not touch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from PIL import Image

from nbeval.adapters.base import EditRequest, GenRequest
from nbeval.adapters.reference import ReferenceAdapter
from reference_model import plan
from reference_model.model import Settings, changed_tokens, image_key

GOLDEN = Path(__file__).parent / "golden"
PROMPT = 'Three red circles and two blue squares. Write "JAZZ".'


@pytest.fixture(scope="module")
def adapter() -> ReferenceAdapter:
    return ReferenceAdapter()


def _pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.int16)


def test_golden_image_for_a_seed(adapter):
    """Same checkpoint, prompt and seed → the recorded image (to within float noise across CPUs);
    regenerate with `python tests/golden/make.py` only when the checkpoint changes on purpose."""
    golden = json.loads((GOLDEN / "reference.json").read_text())
    assert golden["checkpoint_sha256"] == adapter.settings()["checkpoint_sha256"], "checkpoint changed: regenerate tests/golden"
    (img,) = adapter.model.generate([golden["prompt"]], [golden["seed"]], Settings(), size=128)
    expected = _pixels(Image.open(GOLDEN / "reference.png"))
    assert np.abs(_pixels(img) - expected).mean() < 1.0
    (again,) = adapter.model.generate([golden["prompt"]], [golden["seed"]], Settings(), size=128)
    assert np.array_equal(_pixels(again), _pixels(img))
    (other,) = adapter.model.generate([golden["prompt"]], [golden["seed"] + 1], Settings(), size=128)
    assert np.abs(_pixels(other) - _pixels(img)).mean() > 1.0


def test_an_image_is_bit_identical_alone_in_a_batch_and_on_any_thread_count(adapter):
    """An image depends on its sample only (prompt, seed): the same bytes drawn alone on one thread as in a
    batch of 16 other prompts on two — the cache key holds nothing else, so nothing else may count."""
    import random

    import torch

    from reference_model import data

    requests = [GenRequest(f"r{i}", data.example(random.Random(i), 0.0).prompt, 100 + i, 128) for i in range(16)]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        batched = [r.image for r in adapter.generate(requests)]
        torch.set_num_threads(1)
        alone = [adapter.generate([r])[0].image for r in requests]
    finally:
        torch.set_num_threads(threads)
    assert len({image_key(im) for im in alone}) == 16
    assert [image_key(im) for im in batched] == [image_key(im) for im in alone]


def test_ground_truth_plan_ablation_uses_the_scene_and_needs_it():
    from nbeval.world import Scene, Shape

    gt = ReferenceAdapter(plan="truth")
    scenes = [Scene(shapes=(Shape("square", "green", "large", x, y),)) for x, y in ((0.5, 0.5), (0.2, 0.2))]
    requests = [GenRequest(f"s{i}", "Draw one green square.", 0, 128, {"scene": sc.to_dict()}) for i, sc in enumerate(scenes)]
    res = gt.generate([*requests, GenRequest("t", "no truth", 0, 128)])
    assert res[0].error is None and res[2].error is not None and "truth" in res[2].error

    def greenness(img, x0, y0):  # how much greener than grey a 16 px cell is
        a = _pixels(img)[y0 : y0 + 16, x0 : x0 + 16]
        return (a[..., 1] - (a[..., 0] + a[..., 2]) / 2).mean()

    # The same prompt and seed; only the true plan moves the square, and the green goes with it.
    assert greenness(res[0].image, 56, 56) > 15 > greenness(res[1].image, 56, 56)
    assert greenness(res[1].image, 18, 18) > 15 > greenness(res[0].image, 18, 18)


def test_editing_keeps_the_untouched_regions(adapter):
    """An edit of a busy true image (the ground-truth-input protocol): with edit context the regions the
    new plan did not change keep the image's own content; regenerating from scratch loses it."""
    from nbeval.world import Scene, Shape, render

    shapes = tuple(Shape(k, c, "medium", x, y) for k, c, x, y in (("circle", "red", 0.2, 0.2), ("square", "blue", 0.5, 0.2), ("triangle", "green", 0.8, 0.2), ("circle", "purple", 0.2, 0.5), ("square", "orange", 0.5, 0.5)))
    scene = Scene(shapes=shapes)
    prompt, instruction = "A picture of " + ", ".join(f"a {s.colour} {s.kind}" for s in shapes) + ".", "Add a large yellow triangle at the bottom right."
    img = render(scene, 128)
    request = EditRequest("e", 1, prompt, (instruction,), (img,), 11, 128)
    kept = adapter.edit([request])[0]
    assert kept.error is None
    before = plan.decode(adapter.model._conversation_plan(prompt, (), 11, adapter.options))
    after = plan.decode(adapter.model.drawn(kept.image)[0])
    grid = adapter.model.tokenizer.geometry.grid
    untouched = (~changed_tokens(before, after, grid)).reshape(grid, grid).repeat_interleave(128 // grid, 0).repeat_interleave(128 // grid, 1).numpy()
    assert untouched.mean() > 0.2
    fresh = ReferenceAdapter(edit_context=False).edit([request])[0]
    diff_kept = np.abs(_pixels(kept.image) - _pixels(img))[untouched].mean()
    diff_fresh = np.abs(_pixels(fresh.image) - _pixels(img))[untouched].mean()
    assert diff_kept < 0.5 * diff_fresh, (diff_kept, diff_fresh)


def test_an_edit_of_its_own_image_keeps_its_tokens_exactly(adapter):
    """A chain of edits on the model's own images: every token no plan in the chain changed is turn 0's,
    bit for bit — the picture is edited, not re-encoded and redrawn (a tokenizer round trip a turn)."""
    import torch

    prompt, seed = 'Two red circles and one blue square. Write "SUN".', 5
    instructions = ("Add a yellow triangle at the bottom right.", "Make the blue square green.")
    (image,) = adapter.model.generate([prompt], [seed], adapter.options, size=128)
    turns = [image]
    for t in range(1, len(instructions) + 1):
        result = adapter.edit([EditRequest("e", t, prompt, instructions[:t], (turns[-1],), seed, 128)])[0]
        assert result.error is None
        turns.append(result.image)
    (plan0, tokens0), *later = [adapter.model.drawn(im) for im in turns]
    grid = adapter.model.tokenizer.geometry.grid
    kept = torch.ones(grid * grid, dtype=torch.bool)
    for (before, _), (after, _) in zip([(plan0, tokens0), *later], later):
        kept &= ~changed_tokens(plan.decode(before), plan.decode(after), grid)
    assert 0.2 < kept.float().mean() < 1.0  # the edits changed something, and left most alone
    assert torch.equal(later[-1][1][kept], tokens0[kept])


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        ReferenceAdapter(checkpoint=str(tmp_path / "nope.safetensors"))
    with pytest.raises(ValueError, match="plan must be one of"):
        ReferenceAdapter(plan="maybe")


@pytest.mark.slow
def test_nbeval_run_uses_the_reference_model_by_default(tmp_path):
    n = 2  # proves the default, not a figure
    r = run_cli(["run", f"n={n}", "tracking=none", f"cache_dir={tmp_path / 'c'}", f"hydra.run.dir={tmp_path / 'out'}"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["model"]["name"] == "reference"
    for suite in ("text_rendering", "counting", "drift"):
        assert res["suites"][suite]["n_failed_generations"] == 0
        assert res["suites"][suite]["n_samples"] == n
    edits = pd.read_parquet(tmp_path / "out" / res["suites"]["drift"]["tables"]["generations"])
    assert sorted(edits["turn"].value_counts().items()) == [(t, n) for t in range(6)]


def test_the_reference_preset_samples_with_the_models_default_settings(compose_cfg):
    """conf/model/reference.yaml lists the sampling knobs (so `model.steps=1` overrides them) and
    `Settings` holds the same defaults, which the golden image and the benchmarks draw with: one copy
    edited without the other would make the golden image no longer the preset's."""
    from dataclasses import fields

    preset = compose_cfg(["model=reference"]).model
    defaults = Settings()
    assert {f.name: preset[f.name] for f in fields(Settings) if f.name in preset} == {f.name: getattr(defaults, f.name) for f in fields(Settings) if f.name in preset}
    assert {"steps", "head_steps", "cfg_scale", "temperature"} <= set(preset)
