"""LPIPS in the pixels scorer, on a user's torchvision backbone weights (here seeded random ones: no
ImageNet weights can be downloaded), and its preservation metrics in the drift suite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from nbeval.records import sha256_file
from nbeval.scorers.pixels import MaskedSimilarity, _torchvision_key
from nbeval.world import Scene, render
from suites.drift import DriftSuite

BOX = [0.1, 0.1, 0.35, 0.35]  # covers the painted square below at 128 px


def _save(state: dict, path: Path) -> Path:
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def alex_weights(tmp_path_factory) -> Path:
    """A full torchvision alexnet state dict (features and classifier), as users have them."""
    torch.manual_seed(0)
    return _save(torchvision.models.alexnet(weights=None).state_dict(), tmp_path_factory.mktemp("lpips") / "alexnet.pth")


@pytest.fixture(scope="module")
def scorer(alex_weights) -> MaskedSimilarity:
    return MaskedSimilarity(lpips={"net": "alex", "weights": str(alex_weights)})


@pytest.fixture(scope="module")
def reference() -> Image.Image:
    sample = DriftSuite(turns=1).samples(1, 0)[0]
    return render(Scene.from_dict(sample.truth[0]["scene"]), 128)


def _noisy(img: Image.Image, sigma: float) -> Image.Image:
    noise = np.random.default_rng(0).normal(0, sigma, (img.height, img.width, 3))
    return Image.fromarray(np.clip(np.asarray(img, dtype=float) + noise, 0, 255).astype(np.uint8))


def test_lpips_is_zero_on_the_reference_and_grows_with_the_damage(scorer, reference):
    assert scorer.compare(reference, reference, [])["lpips"] == pytest.approx(0.0, abs=1e-6)
    values = [scorer.compare(_noisy(reference, s), reference, [])["lpips"] for s in (4, 16, 48)]
    assert 0 < values[0] < values[1] < values[2]
    plain = MaskedSimilarity().compare(_noisy(reference, 16), reference, [])
    assert {k: v for k, v in scorer.compare(_noisy(reference, 16), reference, []).items() if k != "lpips"} == plain


def test_lpips_ignores_changes_inside_the_excluded_boxes(scorer, reference):
    painted = reference.copy()
    painted.paste((200, 30, 30), (20, 20, 40, 40))
    inside = scorer.compare(painted, reference, [BOX])
    assert inside["lpips"] == pytest.approx(scorer.compare(reference, reference, [BOX])["lpips"], abs=1e-6)
    assert scorer.compare(painted, reference, [])["lpips"] > 1e-5
    assert scorer.compare(painted, reference, [[0.6, 0.6, 0.9, 0.9]])["lpips"] > 1e-5, "a box elsewhere masks nothing painted"
    assert scorer.compare(painted, reference, [[0, 0, 1, 1]]) == {"ssim": None, "psnr": None, "kept": 0.0, "lpips": None}


def test_the_users_backbone_weights_are_the_ones_loaded(scorer, alex_weights):
    state = torch.load(alex_weights, weights_only=True)
    loaded = scorer._lpips.net.state_dict()
    assert len(loaded) == 10 and all(torch.equal(v, state[_torchvision_key(k)]) for k, v in loaded.items())


@pytest.mark.parametrize("net", ["vgg", "squeeze"])
def test_vgg_and_squeeze_take_their_torchvision_backbones(net, tmp_path, reference):
    torch.manual_seed(0)
    model = torchvision.models.vgg16() if net == "vgg" else torchvision.models.squeezenet1_1()
    features_only = {f"features.{k}": v for k, v in model.features.state_dict().items()}
    s = MaskedSimilarity(lpips={"net": net, "weights": str(_save(features_only, tmp_path / f"{net}.pth"))})
    assert s.compare(reference, reference, [])["lpips"] == pytest.approx(0.0, abs=1e-6)
    assert s.compare(_noisy(reference, 16), reference, [])["lpips"] > 0


def test_bad_weights_are_refused_clearly(alex_weights, tmp_path):
    with pytest.raises(FileNotFoundError, match="LPIPS weights .* not found"):
        MaskedSimilarity(lpips={"weights": str(tmp_path / "missing.pth")})
    with pytest.raises(ValueError, match="sha256 .* expects 00ff"):
        MaskedSimilarity(lpips={"weights": str(alex_weights), "sha256": "00ff"})
    assert MaskedSimilarity(lpips={"weights": str(alex_weights), "sha256": sha256_file(alex_weights)})._lpips is not None
    squeeze = _save(torchvision.models.squeezenet1_1().state_dict(), tmp_path / "squeezenet.pth")
    with pytest.raises(ValueError, match="not a torchvision alexnet state dict .*missing"):
        MaskedSimilarity(lpips={"net": "alex", "weights": str(squeeze)})
    with pytest.raises(ValueError, match="net must be one of"):
        MaskedSimilarity(lpips={"net": "resnet", "weights": str(squeeze)})
    with pytest.raises(ValueError, match="unknown scorer.pixels.lpips keys"):
        MaskedSimilarity(lpips={"weight": str(squeeze)})


def test_fingerprint_changes_only_when_lpips_is_on(scorer, alex_weights):
    off = MaskedSimilarity()
    assert "lpips" not in off.settings()
    assert MaskedSimilarity(lpips={"net": "vgg", "weights": None}).fingerprint == off.fingerprint
    assert scorer.fingerprint != off.fingerprint
    assert scorer.settings()["lpips"]["net"] == "alex" and scorer.settings()["lpips"]["backbone_sha256"] == sha256_file(alex_weights)


def test_drift_run_reports_lpips_preservation_and_it_worsens_under_per_turn_blur(compose_cfg, tmp_path, alex_weights):
    from conftest import evaluate

    base = ["model=oracle", "suite=[drift]", "n=3", "suite.drift.turns=2", f"scorer.pixels.lpips.weights={alex_weights}"]
    clean = evaluate(compose_cfg(base), tmp_path / "clean")
    blurred = evaluate(compose_cfg([*base, "model.corruption=drift", "model.severity=3"]), tmp_path / "blurred")
    c, b = clean["suites"]["drift"]["metrics"], blurred["suites"]["drift"]["metrics"]
    assert c["preservation_lpips"]["value"] == pytest.approx(0.0, abs=1e-6) and c["preservation_lpips"]["higher_is_better"] is False
    assert b["preservation_lpips"]["value"] > 1e-4 and b["preservation_lpips/turn_2"]["value"] > b["preservation_lpips/turn_1"]["value"]
    assert b["drift_slope_lpips"]["value"] > 0 and "fidelity_lpips" in b
    assert b["self_drift_slope_lpips"]["value"] > 0 and "consistency_lpips" in b and c["self_preservation_lpips"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert clean["scorers"]["pixels"]["lpips"]["backbone_sha256"] == sha256_file(alex_weights)
    # The per-turn figure gains an LPIPS panel (3.75 in each at 100 dpi): 6 panels here, 5 without LPIPS.
    with Image.open(tmp_path / "blurred" / "drift" / "plots" / "drift_per_turn.png") as fig:
        assert fig.width == pytest.approx(6 * 375, abs=10)
