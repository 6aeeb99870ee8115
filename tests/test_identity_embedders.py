"""Identity embeddings from a user's weights — DINOv2 from a transformers folder, a TorchScript face
embedder — on tiny randomly-initialised models the test builds and saves, loaded through the real
configs (`scorer=[identity_dinov2] scorer.identity.path=…`). Random weights: the tests check the
plumbing (determinism, the reference, fingerprints, refusals), not what the embeddings are worth."""

from __future__ import annotations

import json
import os
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate
from PIL import ImageOps

from conftest import run_cli
from nbeval.records import folder_sha256, sha256_file
from nbeval.world import Scene, render
from suites.identity import IdentitySuite

if os.environ.get("CI"):  # CI installs the test extra, which has transformers: missing there is a failure
    import transformers  # noqa: F401
else:
    pytest.importorskip("transformers", reason="pip install -e '.[dinov2]'")

CONFIG = {"dinov2": "identity_dinov2", "torchscript": "identity_torchscript"}


def _tiny_dinov2(out, seed: int = 0, processor: bool = True):
    """A DINOv2 with 2 layers of width 32 on 56-px inputs (4×4 patches of 14), as save_pretrained writes it."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                             patch_size=14, image_size=56)).save_pretrained(out)
    if processor:
        BitImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 56, "width": 56},
                          image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(out)
    return out


def _tiny_torchscript(path, seed: int = 0, flatten: bool = True):
    """A scripted conv net: (N, 3, H, W) → (N, 16) (without `flatten`: (N, 16, 1, 1), not an embedder)."""
    torch.manual_seed(seed)
    layers = [torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 16, 3, stride=2),
              torch.nn.AdaptiveMaxPool2d(1)]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
        torch.jit.script(torch.nn.Sequential(*layers, *([torch.nn.Flatten()] if flatten else []))).save(str(path))
    return path


@pytest.fixture(scope="session")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("embedders")
    return {"dinov2": _tiny_dinov2(root / "dinov2"), "torchscript": _tiny_torchscript(root / "face.pt")}


def _scorer(compose_cfg, backend: str, path, *overrides: str):
    cfg = compose_cfg(["suite=[identity]", f"scorer=[{CONFIG[backend]}]", f"scorer.identity.path={path}", *overrides])
    return instantiate(cfg.scorer.identity)


@pytest.fixture(scope="module")
def identities():
    """(image, truth of the first identity): a turn of the first identity, its reference render, that
    render inverted, and the reference render of another identity."""
    suite = IdentitySuite()
    s, other = suite.samples(2, 0)
    truth, other_truth = suite.scorer_truth(s, 1, "identity"), suite.scorer_truth(other, 0, "identity")
    reference = render(Scene.from_dict(truth["reference"]), 256)
    return {"turn": (render(Scene.from_dict(s.truth[1]["scene"]), 256), truth), "reference": (reference, truth),
            "inverted": (ImageOps.invert(reference), truth), "other": (render(Scene.from_dict(other_truth["reference"]), 256), truth)}


@pytest.mark.parametrize("backend", CONFIG)
def test_the_same_image_embeds_identically_and_the_reference_render_matches_itself(backend, weights, compose_cfg, identities):
    scorer = _scorer(compose_cfg, backend, weights[backend])
    images, truths = zip(*(identities[k] for k in ("turn", "reference", "inverted", "other")))
    first = scorer.read(list(images), list(truths))
    again = scorer.read([images[0], images[0]], [truths[0], truths[0]])  # another batch, another call
    assert first[0] == again[0] == again[1] and len(first[0]["embedding"]) == (32 if backend == "dinov2" else 16)
    assert np.linalg.norm(first[0]["embedding"]) == pytest.approx(1, abs=1e-4)
    turn, reference, inverted, other = (r["reference_similarity"] for r in first)
    assert reference == pytest.approx(1, abs=1e-5)  # the reference render is the reference
    assert inverted < 0.99 and turn < 1 - 1e-4 and other < 1 - 1e-4  # random weights: changed images, however little


@pytest.mark.parametrize("backend", CONFIG)
def test_the_fingerprint_holds_the_weights_sha256_and_follows_the_weights_not_the_path(backend, weights, compose_cfg, tmp_path):
    path = weights[backend]
    scorer = _scorer(compose_cfg, backend, path)
    digest = folder_sha256(path) if backend == "dinov2" else sha256_file(path)
    card = scorer.card()
    assert scorer.settings()["weights_sha256"] == digest and card["weights_sha256"] == digest
    assert card["path"] == str(path) and card["reference_side"] == 256 and "L2-normalised" in card["embedding"]
    assert _scorer(compose_cfg, backend, path, f"scorer.identity.sha256={digest}").fingerprint == scorer.fingerprint  # pinned

    copy = tmp_path / "copy"
    if backend == "dinov2":
        shutil.copytree(path, copy)
        (copy / "README.md").write_text("docs do not change the embeddings")
    else:
        shutil.copy(path, copy)
    assert _scorer(compose_cfg, backend, copy).fingerprint == scorer.fingerprint  # same weights elsewhere: same cache

    other = _tiny_dinov2(tmp_path / "other", seed=1) if backend == "dinov2" else _tiny_torchscript(tmp_path / "other.pt", seed=1)
    changed = _scorer(compose_cfg, backend, other)
    assert changed.settings()["weights_sha256"] != digest and changed.fingerprint != scorer.fingerprint
    knob = "scorer.identity.input_size=96" if backend == "torchscript" else None
    if knob:
        assert _scorer(compose_cfg, backend, path, knob).fingerprint != scorer.fingerprint


def test_dinov2_without_a_preprocessor_config_takes_dinov2s_own_preprocessing(compose_cfg, tmp_path, identities):
    scorer = _scorer(compose_cfg, "dinov2", _tiny_dinov2(tmp_path / "bare", processor=False))
    pre = scorer.settings()["preprocess"]
    assert pre["size"] == {"shortest_edge": 256} and pre["crop_size"] == {"height": 224, "width": 224}
    assert list(pre["image_mean"]) == [0.485, 0.456, 0.406] and pre["resample"] == 3
    ref = identities["reference"]
    assert scorer.read([ref[0]], [ref[1]])[0]["reference_similarity"] == pytest.approx(1, abs=1e-5)


def test_wrong_checksums_and_missing_or_wrong_weights_are_refused(weights, tmp_path):
    from nbeval.scorers.embeddings import Dinov2IdentityScorer, TorchScriptIdentityScorer

    for cls, path in ((Dinov2IdentityScorer, weights["dinov2"]), (TorchScriptIdentityScorer, weights["torchscript"])):
        with pytest.raises(ValueError, match="but the config expects 0000"):
            cls(str(path), sha256="0" * 64)
    with pytest.raises(FileNotFoundError, match="is not a DINOv2 folder"):
        Dinov2IdentityScorer(str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        TorchScriptIdentityScorer(str(tmp_path / "absent.pt"))
    (tmp_path / "vit").mkdir()
    (tmp_path / "vit" / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(ValueError, match="describes a 'vit' model, not dinov2"):
        Dinov2IdentityScorer(str(tmp_path / "vit"))
    with pytest.raises(ValueError, match="not a TorchScript file"):
        TorchScriptIdentityScorer(str(tmp_path / "vit" / "config.json"))
    with pytest.raises(ValueError, match="channel_order"):
        TorchScriptIdentityScorer(str(weights["torchscript"]), channel_order="RBG")


def test_a_torchscript_model_must_return_one_embedding_per_image(compose_cfg, tmp_path, identities):
    scorer = _scorer(compose_cfg, "torchscript", _tiny_torchscript(tmp_path / "maps.pt", flatten=False))
    ref = identities["reference"]
    with pytest.raises(TypeError, match=r"returned \(1, 16, 1, 1\) for 1 images"):
        scorer.read([ref[0]], [ref[1]])


@pytest.mark.slow
@pytest.mark.parametrize("backend", CONFIG)
def test_an_identity_run_through_the_cli_with_each_backend(backend, weights, tmp_path):
    out = tmp_path / "out"
    r = run_cli(["run", "model=oracle", "suite=[identity]", "n=3", f"scorer=[{CONFIG[backend]}]", f"scorer.identity.path={weights[backend]}",
                 "seed=0", "tracking=none", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={out}"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    card = res["scorers"]["identity"]
    assert card["backbone"] == backend and card["path"] == str(weights[backend])
    rec = res["suites"]["identity"]
    assert rec["n_samples"] == 3 and rec["n_failed_generations"] == 0 and rec["n_failed_scores"] == 0
    assert 0 <= rec["metrics"]["verification_auc"]["value"] <= 1
    assert -1 <= rec["metrics"]["mean_pairwise_similarity"]["value"] <= 1
    scores = pd.read_parquet(out / "identity" / "scores.parquet")
    matrices = [np.array(json.loads(d)["matrix"]) for d in scores.loc[scores["metric"] == "mean_pairwise_similarity", "detail"]]
    assert len(matrices) == 3 and all(m.shape == (4, 4) and np.allclose(np.diag(m), 1, atol=1e-3) for m in matrices)
