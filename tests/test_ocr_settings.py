"""The OCR scorer's speed settings: what keeps its fingerprint reads exactly the same, what reads
otherwise changes it (the card of each: benchmarks/results/ocr_settings.md)."""

import torch

from nbeval.adapters.base import GenRequest
from nbeval.adapters.oracle import OracleAdapter
from nbeval.scorers.ocr import EasyOCRScorer
from suites.text_rendering import TextRenderingSuite


def _images(corruption: str | None, severity: int, n: int) -> list:
    suite = TextRenderingSuite()
    reqs = [GenRequest(s.id, s.prompt, s.seed, suite.image_size, s.truth[0]) for s in suite.samples(n, 0)]
    return [g.image for g in OracleAdapter(corruption=corruption, severity=severity).generate(reqs)]


def test_channels_last_and_batching_change_no_reading(ocr_scorer):
    """Clean and blurred words (blur makes the confidences and boxes fragile): the default (channels-last
    detector, one image a call) reads text, boxes and confidences as the plain layout in batches of 4."""
    images = _images(None, 0, 4) + _images("blur", 2, 4)
    fast = ocr_scorer  # the default settings
    plain = EasyOCRScorer(batch_size=4)
    plain.reader.detector = plain.reader.detector.to(memory_format=torch.contiguous_format)
    convs = [m.weight for m in fast.reader.detector.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs), "the layout compared is the one in use"
    readings = fast.read(images, [{}] * len(images))
    assert readings == plain.read(images, [{}] * len(images))
    assert [r["text"] for r in readings[:4]] == [s.truth[0]["text"] for s in TextRenderingSuite().samples(4, 0)]


def test_fingerprint_follows_the_detectors_side_not_its_batch():
    default = EasyOCRScorer().fingerprint
    assert EasyOCRScorer(detect_side=256).fingerprint == default == EasyOCRScorer(batch_size=8).fingerprint
    assert EasyOCRScorer(detect_side=192).fingerprint != default
    assert "192 px" in EasyOCRScorer(detect_side=192).settings()["detection"]


def _weights(module: torch.nn.Module) -> list[torch.Tensor]:
    """Every weight a module reads with, as float tensors: its state dict, the recogniser's dynamically
    quantized LSTM weights unpacked from their packed objects."""
    out = []
    for value in module.state_dict().values():
        if isinstance(value, torch.Tensor):
            out.append(value.dequantize() if value.is_quantized else value)
        elif isinstance(value, torch.ScriptObject):  # rnn.CellParamsBase: ("quantized_dynamic", biases, [], [], packed weights)
            kind, biases, _, _, packed = value.__getstate__()[0]
            assert kind == "quantized_dynamic" and packed
            out += list(biases) + [w.dequantize() for p in packed for w in torch.ops.quantized.linear_unpack(p) if w is not None]
    return out


def test_the_reader_loaded_without_random_init_holds_the_same_weights(ocr_scorer, monkeypatch):
    """The reader is built with torch's initialisers switched off (they cost 3 s, and the checkpoint
    overwrites them): every weight of detector and recogniser equals the one easyocr's own path loads."""
    from contextlib import nullcontext

    import nbeval.scorers.ocr as ocr

    fast = ocr_scorer.reader
    monkeypatch.setattr(ocr, "_no_random_init", nullcontext)
    plain = EasyOCRScorer().reader
    for part in ("detector", "recognizer"):
        a, b = _weights(getattr(fast, part)), _weights(getattr(plain, part))
        assert len(a) == len(b) > 30 and all(torch.equal(x, y) for x, y in zip(a, b)), part
