"""Local Hugging Face models: the transformers folders that scorers and judges load, checked before
anything loads (nothing is downloaded in a missing folder's place), and `LoadOnce`, how the
transformers- and diffusers-backed plugins load their model on first use."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")

MODEL_TYPES = {  # the auto classes we load → transformers' table of the model types each one loads
    "AutoModelForZeroShotObjectDetection": "MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES",
    "AutoModelForImageTextToText": "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES",
}


def local_model_folder(path: str, setting: str, auto_class: str, extra: str, want: str) -> tuple[Path, str]:
    """The resolved folder at `path` and its `model_type`, refused when it is missing, is not a
    transformers model folder, or holds a model `auto_class` (e.g. `AutoModelForImageTextToText`)
    cannot load. `setting` names the config key in messages, `extra` the pip extra that brings
    transformers, `want` what to give instead."""
    try:
        from transformers.models.auto import modeling_auto
    except ImportError as e:
        raise ImportError(f"{setting} needs transformers: pip install -e '.[{extra}]'") from e
    p = Path(path).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"{setting}={str(path)!r} is not a folder. Nothing is downloaded: give a local folder that "
                                "save_pretrained wrote or a downloaded snapshot (huggingface-cli download <repo> --local-dir …)")
    config = p / "config.json"
    if not config.is_file():
        raise ValueError(f"{setting}={str(path)!r} is not a transformers model folder (no config.json)")
    model_type = json.loads(config.read_text()).get("model_type")
    if model_type not in getattr(modeling_auto, MODEL_TYPES[auto_class]):
        raise ValueError(f"{setting}={str(path)!r} holds a {model_type!r} model, which {auto_class} does not load: give {want}")
    return p.resolve(), model_type


class LoadOnce(Generic[T]):
    """A model loaded on first use, then kept: a run whose readings are all cached never loads it. A
    failed load is remembered and raised again, so the runner's one-by-one retries fail each item with
    its reason without paying for the load again. Pickled empty: each process loads its own."""

    def __init__(self) -> None:
        self._value: T | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    @property
    def failed(self) -> bool:
        """Whether the load failed: then every use raises its error, which is the run's, not an item's."""
        return self._error is not None

    def get(self, load: Callable[[], T]) -> T:
        with self._lock:
            if self._error is not None:
                raise self._error
            if self._value is None:
                try:
                    self._value = load()
                except Exception as e:
                    self._error = e
                    raise
            return self._value

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()
