"""The OCR scorer loads only easyocr's genuine weights: checked by md5 against easyocr's own config,
memoised by (path, size, mtime) so a run does not re-read 90 MB, but never past a change."""

import hashlib
import os
import shutil

import pytest

from nbeval import cache
from nbeval.cache import file_digest
from nbeval.scorers.ocr import DETECTOR_FILE, RECOGNISER_FILE, EasyOCRScorer, default_model_dir, expected_md5


@pytest.fixture
def reads(monkeypatch, tmp_path):
    """The digest memo in tmp_path, and a count of the files actually hashed."""
    monkeypatch.setenv("NBEVAL_CACHE_DIR", str(tmp_path / "cache"))
    hashed = []
    real = hashlib.file_digest
    monkeypatch.setattr(cache.hashlib, "file_digest", lambda f, algorithm: hashed.append(f.name) or real(f, algorithm))
    return hashed


def test_shipped_weights_match_easyocr_published_md5():
    s = EasyOCRScorer()
    assert s.checksums() == expected_md5()
    assert s.card()["weights_md5"][RECOGNISER_FILE] == "5864788e1821be9e454ec108d61b887d"


def test_tampered_weights_are_refused(tmp_path):
    shutil.copy(f"{default_model_dir()}/{DETECTOR_FILE}", tmp_path / DETECTOR_FILE)
    data = bytearray(open(f"{default_model_dir()}/{RECOGNISER_FILE}", "rb").read())
    data[-1] ^= 0xFF
    (tmp_path / RECOGNISER_FILE).write_bytes(bytes(data))
    assert file_digest(tmp_path / RECOGNISER_FILE, "md5") != expected_md5()[RECOGNISER_FILE]
    s = EasyOCRScorer(model_dir=str(tmp_path))
    with pytest.raises(ValueError, match="refusing to load"):
        s.reader


def test_missing_weights_name_the_option(tmp_path):
    with pytest.raises(FileNotFoundError, match="scorer.ocr.model_dir"):
        EasyOCRScorer(model_dir=str(tmp_path)).fingerprint


def test_fingerprint_changes_with_preprocessing():
    assert EasyOCRScorer(input_side=256).fingerprint != EasyOCRScorer(input_side=384).fingerprint


def test_digest_is_memoised_until_size_or_mtime_change(reads, tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"genuine weights")
    want = hashlib.md5(b"genuine weights").hexdigest()
    assert file_digest(f, "md5") == want and file_digest(f, "md5") == want
    assert len(reads) == 1, "the second call is answered by the memo"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert file_digest(f, "md5") == want and len(reads) == 2, "a new mtime re-hashes"
    f.write_bytes(b"modified weights")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # the memoised mtime: only the size tells
    assert file_digest(f, "md5") == hashlib.md5(b"modified weights").hexdigest() and len(reads) == 3
    assert file_digest(f, "sha256") == hashlib.sha256(b"modified weights").hexdigest(), "each algorithm its own entry"


def test_scorer_fingerprints_once_per_weights_and_refuses_them_modified(reads, tmp_path):
    for name in (DETECTOR_FILE, RECOGNISER_FILE):
        shutil.copy2(f"{default_model_dir()}/{name}", tmp_path / name)
    fingerprint = EasyOCRScorer(model_dir=str(tmp_path)).fingerprint
    assert EasyOCRScorer(model_dir=str(tmp_path)).fingerprint == fingerprint
    assert len(reads) == 2, "a second scorer (a second run) reads neither weight file"
    with open(tmp_path / RECOGNISER_FILE, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))
    with pytest.raises(ValueError, match="refusing to load"):
        EasyOCRScorer(model_dir=str(tmp_path)).fingerprint
