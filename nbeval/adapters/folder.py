"""Precomputed images, for models run elsewhere: `<folder>/<sample_id>.<ext>` for the first turn and
`<folder>/<sample_id>_turn<t>.<ext>` for edit turns. Export the prompts with `nbeval samples`."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from nbeval.adapters.base import EditRequest, GenRequest, GenResult, ModelAdapter, timed
from nbeval.images import DEFAULT_MAX_PIXELS, load_image

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


class FolderAdapter(ModelAdapter):
    capabilities = frozenset({"generate", "edit"})

    def __init__(self, path: str, name: str = "folder", max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_dir():
            raise FileNotFoundError(f"model.path={path!r} is not a folder of images")
        self.name, self.max_pixels = name, max_pixels
        self._files = {p.stem: p for p in sorted(self.path.iterdir()) if p.suffix.lower() in EXTENSIONS}

    def settings(self) -> dict:
        # The folder's content (names, sizes, modification times): new images give a new fingerprint.
        h = hashlib.sha256()
        for _, p in sorted(self._files.items()):
            st = os.stat(p)
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
        return {"path": str(self.path.resolve()), "content": h.hexdigest(), "max_pixels": self.max_pixels}

    def _load(self, stem: str):
        if stem not in self._files:
            raise FileNotFoundError(f"no image named {stem}.* ({'/'.join(e[1:] for e in EXTENSIONS)}) in {self.path}")
        return load_image(self._files[stem], self.max_pixels)

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        return [timed(self._load, r.sample_id) for r in requests]

    def edit(self, requests: list[EditRequest]) -> list[GenResult]:
        return [timed(self._load, f"{r.sample_id}_turn{r.turn}") for r in requests]
