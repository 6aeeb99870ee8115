"""`vlm=world`: nbeval's in-domain judge. It answers nbeval's own question templates
(nbeval.vlm.questions) with nbeval's own instruments — the palette counter, easyocr, nbclip-world —
and refuses any other question. It runs offline out of the box, so it is what tests the whole judge
path (scorers, `nbeval serve vlm=…`, the chat client, caching, failures); it is exactly as good as
those instruments on nbeval's world and knows nothing outside it. Its answers are certain
(log-probability 0 for the answer it gives), except a preference between two images, whose
probability follows the difference of their CLIP cosines.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from nbeval.textmetrics import shows_text
from nbeval.vlm import questions as q
from nbeval.vlm.base import Answer, Judge, Question
from nbeval.world.census import census, located_objects
from nbeval.world.edits import parse_instruction
from nbeval.world.scene import BACKGROUND, COLOURS, TEXT_COLOUR

PAIRWISE_SCALE = 100.0  # logit per unit of cosine difference: CLIP-score's own scale
PQ_TOLERANCE, PQ_CLEAN, PQ_SLOPE = 20.0, 0.01, 50.0  # perceptual quality from off-palette pixels (see _edit_pq)
_PALETTE = np.array([*COLOURS.values(), BACKGROUND, TEXT_COLOUR], dtype=np.float32)
TIE_MARGIN = 1e-3  # cosines closer than this: a tie


class WorldJudge(Judge):
    name = "world"

    def __init__(self, counter: dict | None = None, ocr: dict | None = None, clip_weights: str | None = None) -> None:
        """`counter`, `ocr`: settings of the ShapeCounter and EasyOCRScorer it reads with (their
        defaults: the run's default scorers); `clip_weights`: nbclip-world's file (None: shipped)."""
        from nbeval.scorers.counting import ShapeCounter

        self.counter = ShapeCounter(**(counter or {}))
        self.ocr_settings, self.clip_weights = dict(ocr or {}), clip_weights
        self._ocr = self._clip = None
        self._readings: dict[int, dict] = {}

    @property
    def ocr(self):
        if self._ocr is None:
            from nbeval.scorers.ocr import EasyOCRScorer

            self._ocr = EasyOCRScorer(**self.ocr_settings)
        return self._ocr

    @property
    def clip(self):
        if self._clip is None:
            from nbeval.scorers.clip import DEFAULT_WEIGHTS, NBCLIP_NAME, shared_backbone

            self._clip = shared_backbone(NBCLIP_NAME, self.clip_weights or str(DEFAULT_WEIGHTS), None)
        return self._clip

    def settings(self) -> dict:
        from nbeval.scorers.clip import DEFAULT_WEIGHTS
        from nbeval.records import sha256_file

        return {"templates": q.TEMPLATE_VERSION, "counter": self.counter.fingerprint, "ocr": self.ocr_settings,
                "clip_sha256": sha256_file(self.clip_weights or DEFAULT_WEIGHTS)}

    # --- instruments ----------------------------------------------------------------------------------
    def _reading(self, image: Image.Image) -> dict:
        """The counter's reading, once per image of an `ask` (its questions share their images)."""
        key = id(image)
        if key not in self._readings:
            self._readings[key] = self.counter.read([image], [{}])[0]
        return self._readings[key]

    def _objects(self, image: Image.Image) -> list:
        return located_objects(self._reading(image))

    def _text(self, image: Image.Image) -> str:
        return self.ocr.read([image], [{}])[0]["text"]

    @staticmethod
    def _certain(text: str) -> Answer:
        return Answer(text, [(text, 0.0)], meta={"model": "world"})

    # --- one answer per template ----------------------------------------------------------------------
    def _count(self, image: Image.Image, f: dict) -> Answer:
        """COUNT, or COUNT_ANY (no colour named: every colour counts)."""
        kind, colour = q.singular(f["kinds"]), f.get("colour")
        return self._certain(str(min(sum(k == kind and colour in (None, c) for c, k, _ in self._objects(image)), 10)))

    def _other(self, image: Image.Image, f: dict) -> Answer:
        named = set(q.parse_things(f["things"]))
        return self._certain("yes" if any((c, k) not in named and (None, k) not in named for c, k, _ in self._objects(image)) else "no")

    def _read_text(self, image: Image.Image, f: dict) -> Answer:
        return Answer(self._text(image) or q.NO_TEXT, meta={"model": "world"})

    def _exact(self, image: Image.Image, f: dict) -> Answer:
        want = q.NUMBER_WORDS.index(f["number"]) if f["number"] in q.NUMBER_WORDS else -1
        return self._certain("yes" if census(self._objects(image), f["colour"], q.singular(f["kinds"])) == want else "no")

    def _exists(self, image: Image.Image, f: dict) -> Answer:
        return self._certain("yes" if census(self._objects(image), f["colour"], f["kind"]) else "no")

    def _relation(self, image: Image.Image, f: dict) -> Answer:
        reading = self._reading(image)

        def centre(colour: str | None, kind: str) -> tuple[float, float] | None:  # None: any colour
            o = next((o for o in reading["objects"] if o["kind"] == kind and colour in (None, o["colour"])), None)
            return None if o is None else ((o["bbox"][0] + o["bbox"][2]) / 2, (o["bbox"][1] + o["bbox"][3]) / 2)

        a, b = centre(f["colour"], f["kind"]), centre(f["colour2"], f["kind2"])
        if a is None or b is None:
            return self._certain("no")
        holds = {"to the left of": a[0] < b[0], "to the right of": a[0] > b[0], "above": a[1] < b[1], "below": a[1] > b[1]}[f["relation"]]
        return self._certain("yes" if holds else "no")

    def _edit_sc(self, before: Image.Image, after: Image.Image, f: dict) -> Answer:
        """10: the edit is there and nothing else changed; 5: there, with other changes; 0: not there."""
        edit = parse_instruction(f["instruction"])
        if edit is None:
            return Answer.failed("unsupported", "the world judge reads only the world's edit instructions")
        was, now = self._objects(before), self._objects(after)
        if edit["op"] == "change_text":
            done = shows_text(self._text(after), edit["new"], edit["old"])
            touched: set[tuple[str, str]] = set()
        else:
            c, k = edit["colour"], edit["kind"]

            def delta(colour: str, region: str | None) -> int:
                return census(now, colour, k, region) - census(was, colour, k, region)

            done = {
                "add": lambda: delta(c, None) == 1 and delta(c, edit["where"]) == 1,
                "remove": lambda: delta(c, None) == -1 and delta(c, edit["where"]) == -1,
                "recolour": lambda: delta(c, edit["where"]) == -1 and delta(edit.get("new_colour", ""), edit["where"]) == 1,
                "move": lambda: delta(c, None) == 0 and delta(c, edit["where"]) == -1 and delta(c, edit["to"]) == 1,
            }[edit["op"]]()
            touched = {(c, k), (edit.get("new_colour", c), k)}
        rest = {(col, kind) for col, kind, _ in was + now} - touched
        kept = all(census(was, col, kind) == census(now, col, kind) for col, kind in rest)
        return self._certain("10" if done and kept else "5" if done else "0")

    def _edit_pq(self, before: Image.Image, after: Image.Image, f: dict) -> Answer:
        """The world draws flat colours: blur, noise and smudges leave pixels far from every one of
        them. With u the share of pixels farther than PQ_TOLERANCE from the palette, the background
        and the text colour: 10 − PQ_SLOPE · max(0, u − PQ_CLEAN), clipped to 0–10 and rounded (a clean
        render has about 1.6 % such pixels on anti-aliased edges: 10; blur 1 → 9 … blur 4 → 5)."""
        a = np.asarray(after.convert("RGB"), dtype=np.float32)
        far = np.linalg.norm(a[:, :, None, :] - _PALETTE[None, None], axis=-1).min(-1) > PQ_TOLERANCE
        return self._certain(str(int(round(min(10.0, max(0.0, 10 - PQ_SLOPE * max(0.0, float(far.mean()) - PQ_CLEAN)))))))

    def _pairwise(self, questions: list[tuple[int, Question, dict]], out: list) -> None:
        images = [im for _, qu, _ in questions for im in qu.images]
        emb = self.clip.embed_images(images)
        txt = self.clip.embed_texts([f["prompt"] for _, _, f in questions])
        for j, (i, _, _) in enumerate(questions):
            diff = float(emb[2 * j] @ txt[j] - emb[2 * j + 1] @ txt[j])
            p = 1 / (1 + math.exp(-PAIRWISE_SCALE * diff))
            text = "tie" if abs(diff) < TIE_MARGIN else "first" if diff > 0 else "second"
            out[i] = Answer(text, [("first", math.log(max(p, 1e-12))), ("second", math.log(max(1 - p, 1e-12)))],
                            meta={"model": "world", "cosine_difference": diff})

    def ask(self, questions: list[Question]) -> list[Answer]:
        self._readings = {}  # the questions hold their images until this call ends, so their ids stay theirs
        out: list[Answer | None] = [None] * len(questions)
        pairwise = []
        single = {"count": self._count, "count_any": self._count, "other": self._other, "text": self._read_text, "exact": self._exact,
                  "exists": self._exists, "relation": self._relation}
        double = {"edit_sc": self._edit_sc, "edit_pq": self._edit_pq}
        for i, question in enumerate(questions):
            found = q.which(question.text)
            name = found[0].name if found else None
            if name in single and len(question.images) == 1:
                out[i] = single[name](question.images[0], found[1])
            elif name in double and len(question.images) == 2:
                out[i] = double[name](*question.images, found[1])
            elif name == "pairwise" and len(question.images) == 2:
                pairwise.append((i, question, found[1]))
            else:
                out[i] = Answer.failed("unsupported", "the world judge answers only nbeval's question templates (nbeval.vlm.questions), "
                                       f"with their number of images; not {question.text[:80]!r} with {len(question.images)}")
        if pairwise:
            self._pairwise(pairwise, out)
        return out  # type: ignore[return-value]

