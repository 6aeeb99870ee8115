"""The OCR scorer loads only easyocr's genuine weights: checked by md5 against easyocr's own config."""

import shutil

import pytest

from nbeval.scorers.ocr import DETECTOR_FILE, RECOGNISER_FILE, EasyOCRScorer, default_model_dir, expected_md5, md5


def test_shipped_weights_match_easyocr_published_md5():
    s = EasyOCRScorer()
    assert s.checksums() == expected_md5()
    assert s.card()["weights_md5"][RECOGNISER_FILE] == "5864788e1821be9e454ec108d61b887d"


def test_tampered_weights_are_refused(tmp_path):
    shutil.copy(f"{default_model_dir()}/{DETECTOR_FILE}", tmp_path / DETECTOR_FILE)
    data = bytearray(open(f"{default_model_dir()}/{RECOGNISER_FILE}", "rb").read())
    data[-1] ^= 0xFF
    (tmp_path / RECOGNISER_FILE).write_bytes(bytes(data))
    assert md5(tmp_path / RECOGNISER_FILE) != expected_md5()[RECOGNISER_FILE]
    s = EasyOCRScorer(model_dir=str(tmp_path))
    with pytest.raises(ValueError, match="refusing to load"):
        s.reader


def test_missing_weights_name_the_option(tmp_path):
    with pytest.raises(FileNotFoundError, match="scorer.ocr.model_dir"):
        EasyOCRScorer(model_dir=str(tmp_path)).fingerprint


def test_fingerprint_changes_with_preprocessing():
    assert EasyOCRScorer(input_side=256).fingerprint != EasyOCRScorer(input_side=384).fingerprint
