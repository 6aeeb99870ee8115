"""The diffusers adapter on tiny randomly-initialised pipelines that the test builds and saves
(text-to-image: StableDiffusionPipeline; instruction edits: StableDiffusionInstructPix2PixPipeline),
loaded through the real `nbeval run model=diffusers model.path=…` path. Nothing is downloaded: the
CLIP tokenizer is built from a byte-level vocabulary written here."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3

import numpy as np
import pandas as pd
import pytest
from nbeval.adapters.base import EditRequest, GenRequest
from nbeval.cache import Cache

from conftest import run_cli

if os.environ.get("CI"):  # CI installs the test extra, which has diffusers: missing there is a failure
    import diffusers  # noqa: F401
    import transformers  # noqa: F401
else:
    pytest.importorskip("diffusers", reason="pip install -e '.[diffusers]'")
    pytest.importorskip("transformers", reason="pip install -e '.[diffusers]'")

NATIVE = 32  # the tiny pipelines' own side: latent sample_size 16 × VAE scale factor 2


def _byte_chars() -> list[str]:
    """CLIP's (GPT-2's) printable stand-ins for the 256 bytes."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, extra = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return [chr(c) for c in cs]


def _tiny_pipeline(out, edit: bool = False, seed: int = 0):
    """A randomly-initialised Stable Diffusion (or InstructPix2Pix: 8 UNet input channels) small
    enough for milliseconds per image, written with save_pretrained."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionInstructPix2PixPipeline,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    chars = _byte_chars()
    vocab = {t: i for i, t in enumerate(["<|startoftext|>", "<|endoftext|>", *chars, *(c + "</w>" for c in chars)])}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
        num_attention_heads=2, num_hidden_layers=2, max_position_embeddings=77, projection_dim=16))
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=8 if edit else 4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    cls = StableDiffusionInstructPix2PixPipeline if edit else StableDiffusionPipeline
    pipe = cls(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
               safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    return _tiny_pipeline(root / "t2i"), _tiny_pipeline(root / "edit", edit=True, seed=1)


@pytest.fixture
def one_thread():
    """The adapter's `threads` setting changes the process's torch threads: put them back."""
    import torch

    before = torch.get_num_threads()
    yield 1
    torch.set_num_threads(before)


def _adapter(path, **kw):
    from nbeval.adapters.diffusers_pipeline import DiffusersAdapter

    return DiffusersAdapter(str(path), steps=2, threads=1, **kw)


def _manifests(cache_dir) -> pd.DataFrame:
    with sqlite3.connect(cache_dir / "index.sqlite") as conn:
        rows = conn.execute("SELECT model_fp, turn, image_sha256, manifest FROM generations").fetchall()
    return pd.DataFrame([(fp, t, sha, json.loads(m)) for fp, t, sha, m in rows], columns=["model_fp", "turn", "image_sha256", "manifest"])


def _run(tmp_path, *overrides):
    out = tmp_path / "out"
    r = run_cli(["run", "model=diffusers", "model.steps=2", "model.threads=1", *overrides, "seed=0", "tracking=none",
                 f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={out}"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((out / "results.json").read_text()), out


@pytest.mark.slow
def test_counting_run_through_the_cli_stores_sized_images_and_their_manifests(tmp_path, tiny):
    t2i, _ = tiny
    res, out = _run(tmp_path, f"model.path={t2i}", "suite=[counting]", "n=3")
    from nbeval.records import folder_sha256

    model = res["model"]
    assert model["name"] == "diffusers" and model["settings"]["weights_sha256"] == folder_sha256(t2i)
    assert model["settings"]["steps"] == 2 and "edit_weights_sha256" not in model["settings"]
    rec = res["suites"]["counting"]
    assert rec["n_samples"] == 3 and rec["n_failed_generations"] == 0

    gens = pd.read_parquet(out / "counting" / "generations.parquet")
    samples = pd.read_parquet(out / "counting" / "samples.parquet").set_index("sample_id")
    assert len(gens) == 3 and gens["error"].isna().all() and (gens["model_fingerprint"] == model["fingerprint"]).all()
    cache = Cache(tmp_path / "cache")
    assert all(cache.get_image(sha).size == (256, 256) for sha in gens["image_sha256"])  # the suite's size

    man = _manifests(tmp_path / "cache").set_index("image_sha256")
    assert len(man) == 3 and (man["model_fp"] == model["fingerprint"]).all()
    for _, g in gens.iterrows():
        m = man.loc[g["image_sha256"], "manifest"]
        assert m["pipeline_class"] == "StableDiffusionPipeline" and m["scheduler_class"] == "DDIMScheduler"
        assert m["model_sha256"] == folder_sha256(t2i) and m["settings"] == model["settings"]
        assert m["seed"] == int(samples.loc[g["sample_id"], "seed"]) and m["prompt"] == samples.loc[g["sample_id"], "prompt"]
        assert m["generated_size"] == [NATIVE, NATIVE] and m["size"] == 256 and m["resized"] is True
        assert set(m["versions"]) == {"diffusers", "transformers", "torch"} and all(m["versions"].values())
    assert len(set(gens["image_sha256"])) == 3  # three seeds, three images


@pytest.mark.slow
def test_multi_turn_edits_with_an_instruction_edit_pipeline_through_the_drift_suite(tmp_path, tiny):
    t2i, edit = tiny
    res, out = _run(tmp_path, f"model.path={t2i}", f"model.edit_path={edit}", "model.image_guidance_scale=1.2",
                    "suite=[drift]", "suite.drift.turns=2", "n=2")
    rec = res["suites"]["drift"]
    assert rec["n_failed_generations"] == 0 and rec["n_failed_scores"] == 0
    assert "edit_success" in rec["metrics"] and "preservation_ssim" in rec["metrics"]
    gens = pd.read_parquet(out / "drift" / "generations.parquet")
    assert sorted(gens["turn"]) == [0, 0, 1, 1, 2, 2] and gens["error"].isna().all()
    samples = pd.read_parquet(out / "drift" / "samples.parquet").set_index("sample_id")
    man = _manifests(tmp_path / "cache").set_index("image_sha256")
    seeds = set()
    for _, g in gens.iterrows():
        m = man.loc[g["image_sha256"], "manifest"]
        assert m["size"] == 256 and m["generated_size"] == [NATIVE, NATIVE]
        seeds.add(m["seed"])
        if g["turn"] == 0:
            assert m["pipeline_class"] == "StableDiffusionPipeline"
        else:
            assert m["pipeline_class"] == "StableDiffusionInstructPix2PixPipeline"
            assert m["instruction"] == json.loads(samples.loc[g["sample_id"], "turns"])[g["turn"] - 1]
            assert m["input_size"] == [NATIVE, NATIVE] and m["settings"]["image_guidance_scale"] == 1.2
    assert len(seeds) == 6  # every turn of every chain draws its own noise


def test_same_seed_same_image_other_seed_other_image_across_fresh_loads(tiny, one_thread):
    t2i, edit = tiny
    reqs = [GenRequest("a", "two blue squares", 7, 64), GenRequest("b", "two blue squares", 8, 64)]
    first = _adapter(t2i).generate(reqs)
    again = _adapter(t2i).generate(reqs[::-1])[::-1]  # a fresh load, another order in the batch
    alone = _adapter(t2i, max_batch=1).generate(reqs[:1])
    px = [np.asarray(r.image) for r in first]
    assert all(r.error is None and r.image.size == (64, 64) for r in first + again + alone)
    assert np.array_equal(px[0], np.asarray(again[0].image)) and np.array_equal(px[1], np.asarray(again[1].image))
    assert np.array_equal(px[0], np.asarray(alone[0].image)) and alone[0].manifest["batch"] == 1
    assert not np.array_equal(px[0], px[1])
    assert not np.array_equal(px[0], np.asarray(_adapter(t2i, seed_offset=1).generate(reqs[:1])[0].image))

    editor = _adapter(t2i, edit_path=edit)
    ed = [EditRequest("a", 1, "two blue squares", ("make the squares red",), (first[0].image,), 7, 64)] * 2
    e1, e2 = editor.edit(ed)
    assert e1.error is None and np.array_equal(np.asarray(e1.image), np.asarray(e2.image)) and e1.image.size == (64, 64)
    later = editor.edit([EditRequest("a", 2, "two blue squares", ("make the squares red", "add a circle"), (first[0].image, e1.image), 7, 64)])[0]
    assert later.manifest["seed"] != e1.manifest["seed"] and later.manifest["instruction"] == "add a circle"


def test_size_setting_generates_at_that_side_and_records_the_resize(tiny, one_thread):
    t2i, _ = tiny
    r = _adapter(t2i, size=48).generate([GenRequest("a", "a red circle", 1, 64)])[0]
    assert r.error is None and r.image.size == (64, 64)
    assert r.manifest["generated_size"] == [48, 48] and r.manifest["resized"] is True
    same = _adapter(t2i, size=64).generate([GenRequest("a", "a red circle", 1, 64)])[0]
    assert same.manifest["generated_size"] == [64, 64] and same.manifest["resized"] is False


def test_fingerprint_follows_weights_and_settings_not_the_folder(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    from nbeval.records import _hash_files

    t2i, edit = tiny
    copy = shutil.copytree(t2i, tmp_path / "copy")
    (copy / "README.md").write_text("docs do not change the images")
    base = _adapter(t2i).fingerprint
    assert _adapter(copy).fingerprint == base  # the same files elsewhere: the same model
    hits = _hash_files.cache_info().hits
    assert _adapter(t2i).fingerprint == base and _hash_files.cache_info().hits > hits  # hashed once per process
    assert _adapter(t2i, guidance_scale=3.0).fingerprint != base
    assert _adapter(t2i, negative_prompt="blurry").fingerprint != base
    assert _adapter(t2i, edit_path=edit).fingerprint != base

    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 1e-3
    save_file(tensors, weights, metadata={"format": "pt"})
    assert _adapter(copy).fingerprint != base


def test_refusals_name_the_problem(tiny, tmp_path, compose_cfg, one_thread):
    from nbeval.adapters.diffusers_pipeline import DiffusersAdapter
    from conftest import evaluate

    t2i, _ = tiny
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        DiffusersAdapter(str(tmp_path))
    with pytest.raises(ValueError, match="model.dtype"):
        DiffusersAdapter(str(t2i), dtype="float8")
    cfg = compose_cfg(["model=diffusers", f"model.path={t2i}", "suite=[drift]", "n=1"])
    with pytest.raises(ValueError, match=r"needs model capabilities \['edit'\]"):
        evaluate(cfg, tmp_path / "out")
    bad = _adapter(t2i, call_kwargs={"no_such_argument": 1})
    for _ in range(2):  # the load failure is remembered, not retried per batch
        with pytest.raises(TypeError, match="no_such_argument"):
            bad.generate([GenRequest("a", "a red circle", 1, 64)])
