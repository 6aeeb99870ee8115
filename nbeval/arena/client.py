"""HTTP clients of a running arena: the admin API, and a voter's sign-in as a browser does it (read
the form, post it back with its CSRF nonce). Load tests drive the server through these, so they
exercise exactly what people use."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import httpx
from PIL import Image

FORM_FIELD = re.compile(r'name="(battle_id|csrf)" value="([^"]+)"')


class AdminClient:
    def __init__(self, base_url: str, admin_key: str, timeout: float = 60) -> None:
        self.http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=timeout)

    def _ok(self, r: httpx.Response) -> dict | str:
        if r.status_code >= 400:
            raise RuntimeError(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text[:300]}")
        return r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text

    def create_arena(self, name: str, sampling: str = "uncertainty", image_size: int = 256, reveal: str = "after_vote", aspect: str = "refuse") -> str:
        body = {"name": name, "sampling": sampling, "image_size": image_size, "reveal": reveal, "aspect": aspect}
        return self._ok(self.http.post("/admin/arenas", json=body))["id"]

    def import_generations(self, arena_id: str, items: list[tuple], batch: int = 64, batch_mb: float = 32) -> dict[str, int]:
        """items: (model, sample_id, prompt, image[, suite, tags]). Sent in requests of at most `batch` items and
        `batch_mb` of base64 (the server reads no request past its max_import_mb); returns summed counts."""
        total = {"images_added": 0, "battles_added": 0}
        body: list[dict] = []

        def send() -> None:
            got = self._ok(self.http.post(f"/admin/arenas/{arena_id}/generations", json={"generations": body}))
            total.update({key: total[key] + got[key] for key in total})
            body.clear()

        for m, sid, p, img, *category in items:
            b64 = base64.b64encode(_png(img)).decode()
            if body and (len(body) == batch or sum(len(g["image_b64"]) for g in body) + len(b64) > batch_mb * 2**20):
                send()
            body.append({"model": m, "sample_id": sid, "prompt": p, "image_b64": b64, **dict(zip(("suite", "tags"), category))})
        if body:
            send()
        return total

    def invite(self, arena_id: str, names: list[str], expires_in_days: float | None = None) -> dict[str, str]:
        body = {"names": names, "expires_in_days": expires_in_days}
        return {v["name"]: v["token"] for v in self._ok(self.http.post(f"/admin/arenas/{arena_id}/voters", json=body))["voters"]}

    def revoke(self, arena_id: str, names: list[str]) -> int:
        """End these voters' invites and sessions; how many voters that was."""
        return self._ok(self.http.post(f"/admin/arenas/{arena_id}/voters/revoke", json={"names": names}))["revoked"]

    def status(self, arena_id: str) -> dict:
        return self._ok(self.http.get(f"/admin/arenas/{arena_id}"))

    def votes_jsonl(self, arena_id: str) -> str:
        return self._ok(self.http.get(f"/admin/arenas/{arena_id}/votes", params={"format": "jsonl"}))


def _png(img: Image.Image | bytes) -> bytes:
    if isinstance(img, bytes):
        return img
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def form_fields(html: str) -> dict[str, str]:
    """battle_id and csrf from a battle page (what the browser would post back)."""
    return dict(FORM_FIELD.findall(html))


async def sign_in(http: httpx.AsyncClient, token: str) -> None:
    page = await http.get("/")
    r = await http.post("/login", data={"token": token, "csrf": form_fields(page.text)["csrf"]})
    if r.status_code != 303:
        raise RuntimeError(f"sign-in failed: {r.status_code} {r.text[:200]}")


def generations_from_run(run_dir: Path, suite: str) -> list[tuple[str, str, str, Image.Image, str, list[str]]]:
    """(model, sample_id, prompt, image, suite, tags) of a finished `nbeval run` folder's first-turn
    generations of `suite`, images from the run's cache — what `nbeval arena import` sends to an
    arena. Tags are the sample's as "key=value", so votes can be ranked per category."""
    import json

    import pandas as pd

    from nbeval.cache import Cache

    tables = run_dir / suite
    if not (tables / "generations.parquet").exists():
        raise FileNotFoundError(f"{tables}/generations.parquet not found: is {run_dir} a run folder with suite {suite!r}?")
    cache = Cache(json.loads((run_dir / "results.json").read_text())["config"]["cache_dir"])
    gens = pd.read_parquet(tables / "generations.parquet").query("turn == 0 and error.isna()", engine="python")
    samples = pd.read_parquet(tables / "samples.parquet").set_index("sample_id")
    tags = {sid: [f"{k}={v}" for k, v in json.loads(t).items()] for sid, t in samples["tags"].items()}
    return [(g.model, g.sample_id, samples.at[g.sample_id, "prompt"], cache.get_image(g.image_sha256), suite, tags[g.sample_id]) for g in gens.itertuples()]
