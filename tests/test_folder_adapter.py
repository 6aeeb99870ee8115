"""Precomputed images from a folder: the samples exported by `nbeval samples`, images named by id,
including the broken and unusual files real pipelines write."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from nbeval.adapters.oracle import OracleAdapter
from nbeval.adapters.base import GenRequest
from conftest import evaluate
from nbeval.images import ImageError, load_image
from nbeval.world import Scene, render

from conftest import run_cli


def _render(sample: dict) -> Image.Image:
    req = GenRequest(sample["id"], sample["prompt"], sample["seed"], 256, sample["truth"][0])
    return OracleAdapter().generate([req])[0].image


@pytest.fixture
def exported(tmp_path):
    out = tmp_path / "samples.jsonl"
    r = run_cli(["samples", "suite=[counting]", "n=12", "seed=0", "--truth", "--out", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_samples_export_matches_what_run_scores(exported, tmp_path):
    r = run_cli(["samples", "suite=[counting]", "n=12", "seed=0", "--out", str(tmp_path / "no_truth.jsonl")], tmp_path)
    assert r.returncode == 0
    rows = [json.loads(line) for line in (tmp_path / "no_truth.jsonl").read_text().splitlines()]
    assert [x["id"] for x in rows] == [x["id"] for x in exported]
    assert "truth" not in rows[0] and rows[0]["prompt"] == exported[0]["prompt"]


def test_folder_run_scores_good_files_and_names_each_bad_one(exported, tmp_path, compose_cfg):
    folder = tmp_path / "images"
    folder.mkdir()
    s = exported
    _render(s[0]).save(folder / f"{s[0]['id']}.png")
    _render(s[1]).convert("CMYK").save(folder / f"{s[1]['id']}.jpg", quality=98)
    rgba = _render(s[2]).convert("RGBA")
    rgba.putalpha(Image.fromarray(np.where(np.asarray(rgba)[:, :, :3].min(-1) == 255, 0, 255).astype(np.uint8)))
    rgba.save(folder / f"{s[2]['id']}.png")
    _render(s[3]).quantize(64).save(folder / f"{s[3]['id']}.png")
    _render(s[4]).save(folder / f"{s[4]['id']}.webp", lossless=True)
    png = io.BytesIO()
    _render(s[5]).save(png, format="PNG")
    (folder / f"{s[5]['id']}.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])  # truncated
    (folder / f"{s[6]['id']}.png").write_bytes(b"this is not an image")
    Image.new("RGB", (1200, 1200), "white").save(folder / f"{s[7]['id']}.png")  # above max_pixels below
    # s[8:] have no file at all

    cfg = compose_cfg(["model=folder", f"model.path={folder}", "model.max_pixels=1000000", "suite=[counting]", "n=12", "seed=0"])
    res = evaluate(cfg, tmp_path / "out")
    rec = res["suites"]["counting"]
    assert rec["n_failed_generations"] == 7
    assert rec["metrics"]["exact_accuracy"]["value"] == 1.0 and rec["metrics"]["exact_accuracy"]["n"] == 5

    import pandas as pd

    gens = pd.read_parquet(tmp_path / "out" / "counting" / "generations.parquet").set_index("sample_id")
    err = gens["error"]
    assert err[s[5]["id"]].startswith("ImageError: image data is corrupt or truncated")
    assert err[s[6]["id"]] == "ImageError: not an image file PIL can decode"
    assert "above the limit of 1000000 (max_pixels)" in err[s[7]["id"]]
    assert err[s[8]["id"]].startswith("FileNotFoundError: no image named")
    assert gens.loc[[x["id"] for x in s[:5]], "error"].isna().all()


def test_sixteen_bit_and_float_images_convert_to_the_right_grey_levels(tmp_path):
    grey = np.asarray(render(Scene(), 64).convert("L"), dtype=np.uint16)
    grey[10:20, 10:20] = 40
    Image.fromarray((grey * 257).astype(np.uint16)).save(tmp_path / "g16.png")
    got = np.asarray(load_image(tmp_path / "g16.png"))
    assert got.shape == (64, 64, 3)
    assert np.abs(got[:, :, 0].astype(int) - grey).max() <= 1
    Image.fromarray(grey.astype(np.float32) / 255).save(tmp_path / "f.tiff")
    assert np.abs(np.asarray(load_image(tmp_path / "f.tiff"))[:, :, 1].astype(int) - grey).max() <= 1


def test_huge_images_are_downscaled_and_exif_rotation_applied(tmp_path):
    Image.new("RGB", (3000, 1000), "red").save(tmp_path / "wide.png")
    assert load_image(tmp_path / "wide.png").size == (2048, 683)
    im = Image.new("RGB", (40, 20), "blue")
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90° on display
    im.save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(tmp_path / "rot.jpg").size == (20, 40)
    with pytest.raises(ImageError, match="max_pixels"):
        load_image(tmp_path / "wide.png", max_pixels=1000)
