"""The reference model's parts on real world scenes: plans, grammar, edit regions, tokens, training."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from nbeval.world import Scene, Shape, Word, render
from nbeval.world.layout import MARGIN, shape_box, word_box
from reference_model import data, plan
from reference_model.export import CHECKPOINTS
from reference_model.generator import Generator, collate_prefix, prefix_items
from reference_model.glyph import thought_image, thought_tokens
from reference_model.model import ReferenceModel, changed_tokens
from reference_model.planner import Planner
from reference_model.tokenizer import Geometry, Tokenizer, patchify, to_tensor, unpatchify

SHIPPED = CHECKPOINTS / "reference-cpu.safetensors"


def test_plan_round_trip_keeps_everything_prompts_ask_for():
    rng = random.Random(1)
    for _ in range(300):
        scene = data.example(rng, edit_rate=0.3).scene
        q = plan.quantise(scene)
        assert sorted((s.kind, s.colour, s.size) for s in q.shapes) == sorted((s.kind, s.colour, s.size) for s in scene.shapes)
        assert q.text() == scene.text()
        for a, b in zip(q.shapes, scene.shapes):
            assert abs(a.x - b.x) <= 0.5 / plan.POS_BINS + 1e-6 and abs(a.y - b.y) <= 0.5 / plan.POS_BINS + 1e-6
        for w in q.words:  # planned words are fitted inside the canvas
            x0, y0, x1, y1 = word_box(w)
            assert 0 <= x0 and x1 <= 1 and 0 <= y0 and y1 <= 1


def test_decode_tolerates_malformed_plans():
    garbage = [plan.OBJ, plan.ID["kind:circle"], plan.WORD, plan.ID["char:A"], plan.OBJ] + [plan.ID["x:3"]] * 5 + [999, plan.END]
    assert plan.decode(garbage) == Scene()
    assert plan.decode([]) == Scene()


def _overlapping(boxes) -> bool:
    return any(
        not (a[2] + MARGIN - 1e-6 <= b[0] or b[2] + MARGIN - 1e-6 <= a[0] or a[3] + MARGIN - 1e-6 <= b[1] or b[3] + MARGIN - 1e-6 <= a[1])
        for i, a in enumerate(boxes) for b in boxes[i + 1 :]
    )


def test_grammar_only_allows_well_formed_non_overlapping_plans():
    """Random walks through the grammar (what an untrained planner would sample) stay valid."""
    grammar, rng = plan.Grammar(), random.Random(0)
    for _ in range(60):
        tokens: list[int] = []
        while not tokens or tokens[-1] != plan.END:
            allowed = grammar.allowed(tokens)
            if len([t for t in tokens if t == plan.OBJ]) >= 8 and plan.END in allowed:
                allowed = [plan.END]
            tokens.append(rng.choice(allowed))
        scene = plan.decode(tokens)
        n_items = tokens.count(plan.OBJ)
        assert len(scene.shapes) == n_items
        assert not _overlapping([shape_box(s) for s in scene.shapes])


def test_changed_tokens_cover_the_old_and_new_place_of_a_moved_shape_only():
    a = Shape("circle", "red", "small", 0.1, 0.1)
    b = Shape("square", "blue", "small", 0.9, 0.9)
    moved = Shape("circle", "red", "small", 0.1, 0.9)
    mask = changed_tokens(Scene(shapes=(a, b)), Scene(shapes=(moved, b))).reshape(8, 8)
    assert mask[0, 0] and mask[7, 0]  # where it was, where it went
    assert not mask[7, 7] and not mask[3, 4]  # the untouched square, empty middle
    assert not changed_tokens(Scene(shapes=(a, b)), Scene(shapes=(a, b))).any()
    w = Word("HELLO", 0.08, 0.5, 0.5)
    assert changed_tokens(Scene(words=(w,)), Scene(words=(Word("WORLD", 0.08, 0.5, 0.5),))).reshape(8, 8)[4, 4]


def test_patchify_is_inverted_by_unpatchify():
    x = torch.randn(3, 16, 16, 16)
    tokens = patchify(x)
    assert tokens.shape == (3, 64, 64)
    assert torch.equal(unpatchify(tokens), x)


def test_a_finer_geometry_flows_from_tokenizer_through_generator():
    """4× downsampling to 32×32×8, patched 2×2: 256 tokens of 32 numbers, end to end on real scenes."""
    g = Geometry(widths=(16, 32, 64), channels=8, patch=2)
    assert (g.latent_side, g.grid, g.n_tokens, g.token_dim) == (32, 16, 256, 32)
    torch.manual_seed(0)
    tok = Tokenizer(g).eval()
    rng = random.Random(0)
    scenes = [data.random_scene(rng)[0] for _ in range(2)]
    tokens = tok.to_tokens(to_tensor([render(s, 128) for s in scenes]))
    assert tokens.shape == (2, 256, 32)
    gen = Generator(g, dim=32, depth=1, heads=2, head_width=32, head_depth=1).eval()
    prefix = collate_prefix([prefix_items("two red circles", s) for s in scenes])
    out = gen.sample(prefix, thought_tokens(scenes, tok, sketch_px=64), [torch.Generator().manual_seed(i) for i in range(2)], steps=2, head_steps=2)
    assert out.shape == (2, 256, 32) and tok.from_tokens(out).shape == (2, 3, 128, 128)
    assert changed_tokens(Scene(), Scene(shapes=(Shape("circle", "red", "small", 0.5, 0.5),)), g.grid).shape == (256,)


def test_thought_tokens_are_zero_for_an_empty_plan_and_mark_a_planned_shape():
    """The thought image through the shipped tokenizer: nothing planned is exactly zero; a planned shape
    lights up its own token and hardly a far one; without `sketch_px` (a checkpoint trained on words
    only) the canvas draws no shapes."""
    tok = ReferenceModel.load(SHIPPED).tokenizer
    grid = tok.geometry.grid
    shape = Scene(shapes=(Shape("square", "red", "medium", 0.25, 0.25),))
    empty, marked, words_only = (thought_tokens([s], tok, sketch_px=px)[0] for s, px in ((Scene(), 64), (shape, 64), (shape, None)))
    assert not empty.any() and not words_only.any()
    norms = marked.norm(dim=-1).reshape(grid, grid)
    here, far = norms[grid // 4, grid // 4], norms[-1, -1]
    assert here > 0 and here > 10 * far


def test_thought_image_draws_coarse_shapes_under_crisp_words():
    """Shapes come from the coarse render (blocks of 128/32 = 4 px), words from the full one and on top."""
    word = Word("HELLO", 0.08, 0.5, 0.8)
    scene = Scene(shapes=(Shape("circle", "blue", "large", 0.3, 0.3),), words=(word,))
    img = np.asarray(thought_image(scene, sketch_px=32))
    coarse = np.asarray(render(Scene(shapes=scene.shapes), 32).resize((128, 128), Image.Resampling.NEAREST))
    words = np.asarray(render(Scene(words=(word,)), 128))
    ink = (words != 255).any(-1)
    assert (img[ink] == words[ink]).all() and (img[~ink] == coarse[~ink]).all()
    assert (img[:64, :64] != 255).any() and ink[96:110].any()
    blocks = img[:64, :64].reshape(16, 4, 16, 4, 3)
    assert (blocks == blocks[:, :1, :, :1]).all()  # every 4×4 block one colour: coarse, not re-rendered
    assert np.array_equal(np.asarray(thought_image(scene)), words)  # trained on words only: no shapes


def test_planner_loss_falls_in_a_few_cpu_steps():
    torch.manual_seed(0)
    model = Planner(dim=64, depth=2, heads=2)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = random.Random(0)
    fixed = [data.example(rng, 0.25) for _ in range(16)]
    losses = []
    for _ in range(40):
        loss = model.loss(fixed, "cpu")
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5


TINY = [
    "preset.tokenizer.steps=12", "preset.tokenizer.batch=4", "preset.tokenizer.log_every=1", "preset.tokenizer.ckpt_every=4",
    "preset.generator.steps=12", "preset.generator.batch=4", "preset.generator.log_every=1", "preset.generator.ckpt_every=4",
    "preset.generator.warmup=2", "preset.tokenizer.warmup=2",
]


@pytest.mark.slow
def test_train_script_loss_falls_and_a_killed_run_resumes(tmp_path):
    """The real training script: tokenizer then generator, a few CPU steps each; the planner stage is
    killed mid-run and resumed from its last checkpoint."""
    base = [sys.executable, "-m", "reference_model.train", f"out_dir={tmp_path}", "threads=1"]
    for stage in ("tokenizer", "generator"):
        subprocess.run(base + [f"stage={stage}", *TINY], check=True, capture_output=True, timeout=600)
        hist = torch.load(tmp_path / f"{stage}.pt", weights_only=False)["state"]["history"]
        losses = [h["loss"] for h in hist]
        assert len(losses) == 12
        assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, f"{stage} loss did not fall: {losses}"

    # killed as soon as its first checkpoint (step 5) lands: 55 steps are left to resume, however fast the machine
    planner = ["stage=planner", "preset.planner.steps=60", "preset.planner.batch=4", "preset.planner.ckpt_every=5", "preset.planner.log_every=1"]
    proc = subprocess.Popen(base + planner, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "planner.pt"
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = torch.load(ckpt, weights_only=False)["state"]
    assert not saved["done"] and 0 < saved["step"] < 60
    out = subprocess.run(base + planner, check=True, capture_output=True, text=True, timeout=600)
    assert f"resuming at step {saved['step']}" in out.stdout
    final = torch.load(ckpt, weights_only=False)["state"]
    assert final["done"] and final["step"] == 60
    steps = [h["step"] for h in final["history"]]
    assert steps == sorted(set(steps))  # nothing logged twice after the resume
