"""`scorer=[counter_detector]` on tiny randomly initialised OWLv2 and OWL-ViT detectors that the test
builds and saves (1-layer ViT and text towers, 32 px images in 8 px patches: 16 boxes; a CLIP BPE
tokenizer over a six-word vocabulary written here; the family's image processor): nothing is
downloaded. A random detector proves the code path and the reading's shapes — queries, padding, score
threshold, NMS, boxes as fractions, the fingerprint, the run — never the quality of its counts or of any
metric read with it. Colour naming and NMS, which need no detector, are proven on known boxes and on
the world's renders."""

from __future__ import annotations

import json
import os
import random
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import evaluate
from PIL import Image

from nbeval.readings import CounterReading, missing_keys
from nbeval.scorers.detector import (
    ACHROMATIC,
    DetectorCounter,
    background_colour,
    name_colour,
    nms,
)
from nbeval.world import COLOURS, SHAPE_KINDS, Scene, Word, place_shapes, render
from nbeval.world.layout import shape_box, word_box

if os.environ.get("CI"):  # CI installs the test extra, which has transformers: missing there is a failure
    import transformers  # noqa: F401
else:
    pytest.importorskip("transformers", reason="pip install -e '.[detector]'")

WORDS = ("a", "photo", "of", "circle", "square", "triangle")
WORD = Word("HELLO", 0.05, 0.5, 0.93)


def _tokenizer():
    """A CLIP BPE tokenizer whose merges make each of WORDS one token; the special tokens come last,
    as in CLIP, because OWL's text tower pools at the highest id (the end token)."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        pieces = [*word[:-1], word[-1] + "</w>"]
        for p in pieces:
            vocab.setdefault(p, len(vocab))
        done = pieces[0]
        for p in pieces[1:]:
            merges.append((done, p))
            done += p
            vocab.setdefault(done, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=list(dict.fromkeys(merges)), model_max_length=16), vocab


def _tiny_detector(out, family: str = "owlv2", seed: int = 0):
    """A randomly initialised Owlv2ForObjectDetection or OwlViTForObjectDetection (~11k parameters,
    ~60 KB) and its processor, written with save_pretrained."""
    import torch
    from transformers import (
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessor,
        Owlv2Processor,
        OwlViTConfig,
        OwlViTForObjectDetection,
        OwlViTImageProcessor,
        OwlViTProcessor,
    )

    tokenizer, vocab = _tokenizer()
    text = {"vocab_size": len(vocab), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                "max_position_embeddings": 16, "bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
                "pad_token_id": vocab["<|endoftext|>"]}
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 32, "patch_size": 8}
    torch.manual_seed(seed)
    if family == "owlv2":
        model = Owlv2ForObjectDetection(Owlv2Config(text_config=text, vision_config=vision, projection_dim=16))
        processor = Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer)
    else:
        model = OwlViTForObjectDetection(OwlViTConfig(text_config=text, vision_config=vision, projection_dim=16))
        processor = OwlViTProcessor(image_processor=OwlViTImageProcessor(size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32}),
                                    tokenizer=tokenizer)
    # as initialised, the box head's last layer saturates every box at 0 or 1: small weights give boxes
    # of varied sizes and places, overlapping one another
    torch.nn.init.normal_(model.box_head.dense2.weight, std=0.05)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def owlv2(tmp_path_factory):
    return _tiny_detector(tmp_path_factory.mktemp("detector") / "owlv2")


@pytest.fixture(scope="session")
def owlvit(tmp_path_factory):
    return _tiny_detector(tmp_path_factory.mktemp("detector") / "owlvit", "owlvit")


def _scene(seed: int) -> Scene:
    """Every colour of the palette once, of random kinds and sizes, and a word."""
    rng = random.Random(seed)
    shapes = place_shapes(rng, [(rng.choice(SHAPE_KINDS), c, rng.choice(["small", "medium", "large"])) for c in COLOURS], avoid=[word_box(WORD)])
    return Scene(shapes=shapes, words=(WORD,))


TRUTHS = [{"groups": [{"colour": "red", "kind": "circle"}]},
          {"groups": [{"colour": "blue", "kind": "square"}, {"colour": "green", "kind": "triangle"}]},
          {"groups": [{"colour": "yellow", "kind": "triangle"}]}]


def _images() -> list[Image.Image]:
    """Renders, one of them not square (OWLv2 pads it; OWL-ViT stretches it)."""
    return [render(_scene(0)), render(_scene(1)).resize((300, 200)), render(_scene(2), 128)]


def _check_reading(reading: dict, kinds: set[str]) -> None:
    assert missing_keys(reading, CounterReading) == [] and set(reading) == {"counts", "objects"}
    assert all(isinstance(k, str) and isinstance(v, int) and v > 0 for k, v in reading["counts"].items())
    assert sum(reading["counts"].values()) == len(reading["objects"])
    for o in reading["objects"]:
        assert set(o) == {"kind", "colour", "bbox"} and o["kind"] in kinds and o["colour"] in [*COLOURS, ACHROMATIC]
        x0, y0, x1, y1 = o["bbox"]
        assert all(isinstance(v, float) for v in o["bbox"]) and 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1


@pytest.mark.parametrize("family", ["owlv2", "owlvit"])
def test_readings_are_counter_readings_and_do_not_depend_on_the_batch(family, request):
    """Images asking for one and for two kinds share a batch: the shorter query list is padded, and a
    padded query must never name a box, so each reading equals the image's reading alone."""
    counter = DetectorCounter(str(request.getfixturevalue(family)), score_threshold=0.0)
    readings = counter.read(_images(), TRUTHS)
    assert len(readings) == 3 and any(r["objects"] for r in readings)
    for reading, truth in zip(readings, TRUTHS):
        _check_reading(reading, {g["kind"] for g in truth["groups"]})
    for image, truth, reading in zip(_images(), TRUTHS, readings):
        (alone,) = counter.read([image], [truth])
        assert alone["counts"] == reading["counts"]
        assert [(o["kind"], o["colour"]) for o in alone["objects"]] == [(o["kind"], o["colour"]) for o in reading["objects"]]
        assert [v for o in alone["objects"] for v in o["bbox"]] == pytest.approx([v for o in reading["objects"] for v in o["bbox"]], abs=1e-3)


def test_owlv2_boxes_are_fractions_of_the_image_not_of_its_padded_square(owlv2):
    """OWLv2 pads an image to a square (black, at the bottom and right) before it sees it: the same
    image padded beforehand gives the model the same input, so its boxes, scaled from the square to the
    image, must be the image's boxes (all of them kept: no threshold, no suppression)."""
    counter = DetectorCounter(str(owlv2), score_threshold=0.0, nms_iou=1.0)
    image = render(_scene(1)).resize((300, 200))
    square = Image.new("RGB", (300, 300))
    square.paste(image)
    (wide,), (padded,) = counter.read([image], TRUTHS[1:2]), counter.read([square], TRUTHS[1:2])
    expected = []
    for o in padded["objects"]:
        x0, y0, x1, y1 = o["bbox"]
        box = [x0, min(1.0, y0 * 1.5), x1, min(1.0, y1 * 1.5)]
        if (box[3] - box[1]) * 200 >= 1:  # what lies wholly in the padding is nothing in the image
            expected.append((o["kind"], box))
    assert 0 < len(wide["objects"]) <= len(padded["objects"])
    assert [o["kind"] for o in wide["objects"]] == [k for k, _ in expected]
    assert [v for o in wide["objects"] for v in o["bbox"]] == pytest.approx([v for _, b in expected for v in b], abs=1e-6)


def test_extra_kinds_are_queried_too(owlv2):
    counter = DetectorCounter(str(owlv2), score_threshold=0.0, extra_kinds=list(SHAPE_KINDS))
    assert counter.kinds(TRUTHS[0]) == ["circle", "square", "triangle"]
    readings = counter.read(_images(), TRUTHS)
    for reading in readings:
        _check_reading(reading, set(SHAPE_KINDS))
    assert {o["kind"] for r in readings for o in r["objects"]} - {"circle"}  # more than the requested kind can name a box


def test_the_threshold_filters_and_nms_keeps_no_overlapping_pair(owlv2):
    images = _images()
    assert all(r == {"counts": {}, "objects": []} for r in DetectorCounter(str(owlv2), score_threshold=1.0).read(images, TRUTHS))
    everything = DetectorCounter(str(owlv2), score_threshold=0.0, nms_iou=1.0).read(images, TRUTHS)  # every box the model gives
    assert all(0 < len(r["objects"]) <= 16 for r in everything)  # 32 px in 8 px patches: 16 boxes
    suppressed = DetectorCounter(str(owlv2), score_threshold=0.0, nms_iou=0.3).read(images, TRUTHS)
    for kept, every in zip(suppressed, everything):
        assert 0 < len(kept["objects"]) < len(every["objects"])
        boxes = np.array([o["bbox"] for o in kept["objects"]])
        ious = [_iou(boxes[i], boxes[j]) for i in range(len(boxes)) for j in range(i)]
        assert max(ious, default=0) <= 0.3 + 1e-3


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return w * h / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h)


def test_nms_removes_duplicates_of_known_boxes():
    boxes = np.array([[0.10, 0.10, 0.30, 0.30],   # an object
                      [0.11, 0.10, 0.31, 0.30],   # the same object, found again (IoU ≈ 0.9)
                      [0.60, 0.60, 0.80, 0.80],   # another object
                      [0.10, 0.20, 0.30, 0.40],   # overlaps the first by IoU 1/3
                      [0.65, 0.60, 0.85, 0.80]])  # the other object again (IoU 0.6)
    scores = np.array([0.5, 0.9, 0.7, 0.4, 0.2])
    assert nms(boxes, scores, 0.5) == [1, 2, 3]  # best first; the worse duplicates go
    assert nms(boxes, scores, 0.3) == [1, 2]  # 1/3 > 0.3: the overlapping box goes too
    assert nms(boxes, scores, 1.0) == [1, 2, 0, 3, 4]  # nothing overlaps by more than everything
    assert nms(boxes[:0], scores[:0], 0.5) == []


@pytest.mark.parametrize("style", ["clean", "shaded on a tinted background"])
def test_pixels_name_the_colour_of_every_shape_in_world_renders(style):
    """The true box of every shape of every colour and size, clean and shaded (darkened from 100 % to
    55 % across the image) on a tinted background: hue names them all; a box on the word alone
    (black on the background) has no colour."""
    for seed in range(8):
        scene = _scene(seed)
        image = render(scene)
        if style != "clean":
            a = np.asarray(image, dtype=np.float32)
            a = np.where((a == 255).all(-1, keepdims=True), np.array([235, 225, 200], np.float32), a)
            image = Image.fromarray((a * np.linspace(1.0, 0.55, a.shape[1])[None, :, None]).astype(np.uint8))
        background = background_colour(image)
        assert [name_colour(image, shape_box(s), background) for s in scene.shapes] == [s.colour for s in scene.shapes]
        assert name_colour(image, word_box(WORD), background) == ACHROMATIC


def test_clip_names_the_colour_of_every_shape_in_world_renders(owlv2):
    """Colours by the shipped in-domain CLIP (nbclip-world) on the shapes' true boxes; the settings
    then name CLIP's weights by checksum instead of the pixel rule."""
    counter = DetectorCounter(str(owlv2), clip={"model": "nbclip-world", "weights": None})
    for seed in range(4):
        scene = _scene(seed)
        found = [(s.kind, shape_box(s)) for s in scene.shapes]
        assert counter.colours(render(scene), found) == [s.colour for s in scene.shapes]
    colour = counter.settings()["colour"]
    assert colour["method"] == "clip" and colour["weights_sha256"] and "weights" not in colour
    assert DetectorCounter(str(owlv2)).settings()["colour"]["method"] == "pixels"


def test_fingerprint_follows_the_files_and_settings_not_the_folder(owlv2, tmp_path):
    from safetensors.torch import load_file, save_file

    copy = shutil.copytree(owlv2, tmp_path / "copy")
    (copy / "README.md").write_text("docs do not change boxes")
    base = DetectorCounter(str(owlv2))
    assert str(owlv2) not in json.dumps(base.settings()) and base.card()["path"] == str(owlv2.resolve())
    assert DetectorCounter(str(copy)).fingerprint == base.fingerprint  # the same files elsewhere: the same counter
    assert DetectorCounter(str(owlv2), device="cuda").fingerprint == base.fingerprint  # where it runs is not what it reads
    for changed in ({"score_threshold": 0.2}, {"nms_iou": 0.5}, {"query_template": "a {kind}"}, {"extra_kinds": ["circle"]},
                    {"dtype": "bfloat16"}, {"clip": {"model": "nbclip-world"}}):
        assert DetectorCounter(str(owlv2), **changed).fingerprint != base.fingerprint, changed

    weights = copy / "model.safetensors"
    tensors = load_file(weights)
    name = min(tensors)
    tensors[name].view(-1)[0] += 1e-3
    save_file(tensors, weights, metadata={"format": "pt"})
    assert DetectorCounter(str(copy)).fingerprint != base.fingerprint


def test_refusals_name_the_problem(owlv2, tmp_path):
    from transformers import CLIPConfig

    from nbeval.records import folder_sha256

    digest = folder_sha256(owlv2)
    assert DetectorCounter(str(owlv2), sha256=digest).settings()["weights_sha256"] == digest
    with pytest.raises(ValueError, match="but the config expects"):
        DetectorCounter(str(owlv2), sha256="0" * 64)
    with pytest.raises(FileNotFoundError, match="Nothing is downloaded"):
        DetectorCounter(str(tmp_path / "no-such-detector"))
    with pytest.raises(ValueError, match="no config.json"):
        DetectorCounter(str(tmp_path))
    CLIPConfig().save_pretrained(tmp_path / "clip")
    with pytest.raises(ValueError, match="AutoModelForZeroShotObjectDetection does not load"):
        DetectorCounter(str(tmp_path / "clip"))
    (tmp_path / "gdino").mkdir()
    (tmp_path / "gdino" / "config.json").write_text(json.dumps({"model_type": "grounding-dino"}))
    with pytest.raises(ValueError, match="reads owlvit and owlv2 only"):
        DetectorCounter(str(tmp_path / "gdino"))
    for bad, match in (({"dtype": "float8"}, "dtype"), ({"query_template": "a photo"}, "must contain"),
                       ({"query_template": "a {colour} {kind}"}, "must name only"), ({"nms_iou": 1.5}, r"\[0, 1\]"),
                       ({"clip": {"weights": None, "tokenizer": "x"}}, "takes model, weights and sha256")):
        with pytest.raises(ValueError, match=match):
            DetectorCounter(str(owlv2), **bad)


def test_an_image_that_cannot_be_read_fails_alone(owlv2, cache):
    """Through the runner: a truth that asks for nothing fails its batch, which is retried one image at
    a time; only that image fails, with the reason."""
    from nbeval.runner import read

    shas = [cache.put_image(im) for im in _images()]
    items = [(shas[0], TRUTHS[0]), (shas[1], {"groups": []}), (shas[2], TRUTHS[2])]
    readings, cached = read(DetectorCounter(str(owlv2)), items, cache, batch_size=3, desc="test")
    assert cached == 0 and isinstance(readings[1], ValueError) and "requests no kind" in str(readings[1])
    for reading, (_, truth) in zip(readings[::2], items[::2]):
        _check_reading(reading, {g["kind"] for g in truth["groups"]})


def test_a_counting_run_reads_every_sample_with_the_detector(owlv2, tmp_path, compose_cfg):
    """The counting suite, unchanged, on the detector's readings: every sample is scored with every
    metric (the values mean nothing: the detector is random)."""
    cfg = compose_cfg(["model=oracle", "suite=[counting]", "n=2", "scorer=[counter_detector]", f"scorer.counter.path={owlv2}"])
    res = evaluate(cfg, tmp_path / "out")
    card = res["scorers"]["counter"]
    assert card["class"] == "nbeval.scorers.detector.DetectorCounter" and card["model_type"] == "owlv2"
    rec = res["suites"]["counting"]
    assert rec["n_samples"] == 2 and rec["n_failed_generations"] == 0 and rec["n_failed_scores"] == 0
    assert {"exact_accuracy", "geneval_pass", "mae", "bias"} <= set(rec["metrics"])
    scores = pd.read_parquet(tmp_path / "out" / "counting" / "scores.parquet")
    assert scores["error"].isna().all() and scores["value"].notna().all()
    assert set(scores["sample_id"]) == {f"counting-0-{i:05d}" for i in range(2)}
