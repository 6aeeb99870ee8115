"""Train nbclip-world, the in-domain CLIP we ship: open_clip's own model classes, our world's data.

No pretrained CLIP can be downloaded here, so the adherence and identity scorers default to this
model; a user's pretrained open_clip weights go through the very same loader (`scorers.clip`).
Training is contrastive with one world-made hard negative caption per image (NegCLIP style): the
negatives differ from the truth in one colour, shape, count, relation or character part, which is
exactly what CLIP-R-precision asks the model to tell apart. Left/right is the hard part: our first
model coded rows and hardly columns (the world's characters need only rows) and did not learn "to the
left of" in 6,000 more steps over four phases. The shipped weights had mirror pairs and a paraphrase
loss from step 0, then a relation-only phase, then a mixed phase distilled from an earlier model
(`--teacher`) to win back counts and characters.

    python -m nbeval.scorers.clip_train --run-dir runs/nbclip            # train (resumable), export, card
    python -m nbeval.scorers.clip_train --run-dir runs/nbclip --card-only
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from tqdm.auto import tqdm

from nbeval.records import sha256_file
from nbeval.scorers.clip import NBCLIP_NAME, WEIGHTS_DIR, load_backbone
from nbeval.stats import proportion
from nbeval.world import Scene, render
from nbeval.world.characters import PARTS, random_identity
from nbeval.world.claims import HORIZONTAL, RELATIONS, hard_negatives, random_claim, scene_for
from nbeval.world.layout import character_scene, place_character

RENDER_SIDE = 256  # what suites hand the scorers; the backbone's own transform resizes it
PHASE1_MIX = {"shapes": 0.6, "relations": 0.35, "mirror": False}  # the mix of data files that predate the option


_MIRROR = {"to the left of": "to the right of", "to the right of": "to the left of", "above": "below", "below": "above"}


class Example(NamedTuple):
    scene: Scene
    caption: str
    negatives: dict[str, str]  # kind of hard negative (a claim attribute or a character part) → caption
    family: str  # "shapes" or "characters"


def example(rng: random.Random, mix: dict) -> Example:
    """A scene, its caption and its hard-negative captions: a `mix["shapes"]` share of shape claims
    (`mix["relations"]` of them spatial relations), the rest characters. With `mix["mirror"]`, a
    relation also gets the negative with the mirrored relation word, which teaches what the word means."""
    if rng.random() < mix["shapes"]:
        claim = random_claim(rng, relation=rng.random() < mix["relations"])
        negatives = {k: n.caption() for k, n in hard_negatives(claim, rng).items()}
        if claim.relation and mix["mirror"]:
            negatives["relation_word"] = replace(claim, relation=_MIRROR[claim.relation]).caption()
        return Example(scene_for(claim, rng), claim.caption(), negatives, "shapes")
    ident = random_identity(rng)
    negatives = {p: ident.swap(p, rng).describe() for p in PARTS if not (p == "accessory_colour" and ident.accessory == "none")}
    distractor = rng.random() < 0.5
    return Example(character_scene(rng, place_character(rng, ident), distractor), ident.describe(), negatives, "characters")


def _pixels(img: Image.Image, transform) -> np.ndarray:
    """The backbone's resize and crop, kept as uint8 so a dataset of 10⁵ images fits in memory."""
    for t in transform.transforms[:2]:
        img = t(img)
    return np.asarray(img, dtype=np.uint8)


def build_data(path: Path, n: int, seed: int, mix: dict, transform) -> dict:
    """Render `n` examples once (an existing file of the same n, seed and mix is reused).
    A third are degraded (a 64-px round trip or noise) like a weak generator's output."""
    if path.exists():
        data = torch.load(path, weights_only=False)
        if data["n"] == n and data["seed"] == seed and data.get("mix", PHASE1_MIX) == mix:
            return data
    rng = random.Random(f"nbclip-data:{seed}")
    images, captions, negatives = [], [], []
    for _ in tqdm(range(n), desc="render training scenes", unit="img"):
        scene, cap, negs, _ = example(rng, mix)
        img = render(scene, RENDER_SIDE)
        roll = rng.random()
        if roll < 0.2:
            img = img.resize((64, 64), Image.Resampling.BICUBIC).resize((RENDER_SIDE, RENDER_SIDE), Image.Resampling.BICUBIC)
        elif roll < 0.33:
            a = np.asarray(img, dtype=np.float32) + np.random.default_rng(rng.getrandbits(32)).normal(0, 12, (RENDER_SIDE, RENDER_SIDE, 3))
            img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
        images.append(_pixels(img, transform))
        captions.append(cap)
        negatives.append(list(negs.values()))
    data = {"n": n, "seed": seed, "mix": mix, "images": torch.from_numpy(np.stack(images)), "captions": captions, "negatives": negatives}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return data


def _normalise(images: torch.Tensor, transform) -> torch.Tensor:
    norm = transform.transforms[-1]
    x = images.permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(norm.mean).view(1, 3, 1, 1)) / torch.tensor(norm.std).view(1, 3, 1, 1)


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, neg: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE; each image also competes its caption against every hard negative."""
    logits_img = scale * img @ torch.cat([txt, neg]).T
    logits_txt = scale * txt @ img.T
    target = torch.arange(len(img))
    return (F.cross_entropy(logits_img, target) + F.cross_entropy(logits_txt, target)) / 2


def relation_of(caption: str) -> str | None:
    """The spatial relation a caption states (None for a caption without one)."""
    return next((r for r in RELATIONS if f" {r} " in caption), None)


def _mirror_caption(text: str, relation: str) -> str:
    return text.replace(relation, "\0").replace(_MIRROR[relation], relation).replace("\0", _MIRROR[relation])


def mirror_pairs(images: torch.Tensor, captions: list[str], negatives: list[list[str]]) -> tuple[torch.Tensor, list[str], list[list[str]]]:
    """Image-side hard negatives: every relation image's mirror along the relation's axis, captioned
    with the relation word mirrored, joins the batch. Text negatives alone left the image tower almost
    blind to left/right (cosine 0.98 between a scene and its mirror after 7,000 steps; 0.81 for an
    up/down flip), so a caption could not tell "A to the left of B" from "B to the left of A"."""
    rows = [(i, r) for i, c in enumerate(captions) if (r := relation_of(c)) is not None]
    if not rows:
        return images, captions, negatives
    flipped = [images[i].flip(1 if r in HORIZONTAL else 0) for i, r in rows]  # images are (H, W, C)
    return (torch.cat([images, torch.stack(flipped)]), captions + [_mirror_caption(captions[i], r) for i, r in rows],
            negatives + [[_mirror_caption(n, r) for n in negatives[i]] for i, r in rows])


def paraphrase(caption: str) -> str | None:
    """The same relation told from the other object ("A to the left of B" → "B to the right of A");
    None for a caption without a relation."""
    if (r := relation_of(caption)) is None:
        return None
    first, second = caption.split(f" {r} ")
    return f"{second} {_MIRROR[r]} {first}"


def paraphrase_loss(model: torch.nn.Module, tokenizer, captions: list[str], negatives: list[list[str]], scale: torch.Tensor) -> torch.Tensor:
    """Text-only InfoNCE: a relation caption's nearest text must be its paraphrase, not its own hard
    negatives (objects swapped, word mirrored) nor the other captions' paraphrases. With images and
    captions both blind to left/right, neither tower's contrastive gradient starts telling the two
    apart; this gives the text tower word order on its own, and the image tower then has a target."""
    rows = [(c, p, negs) for c, negs in zip(captions, negatives) if (p := paraphrase(c)) is not None]
    if not rows:
        return torch.zeros(())
    anchors = [c for c, _, _ in rows]
    paras = [p for _, p, _ in rows]
    taken = set(paras) | set(captions)  # a mirrored row's negative can be another row's caption or paraphrase
    candidates = paras + [n for _, _, negs in rows for n in negs if n not in taken]
    t = model.encode_text(tokenizer(anchors + candidates), normalize=True)
    logits = scale * t[: len(anchors)] @ t[len(anchors) :].T
    return F.cross_entropy(logits, torch.arange(len(anchors)))


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's KD on each image's row of caption logits: the teacher's softened ranking of every
    caption, margins included, not just which one wins; rotation-free, so the student's embedding
    space may differ from the teacher's."""
    t = temperature
    return t * t * F.kl_div(F.log_softmax(student_logits / t, -1), F.log_softmax(teacher_logits / t, -1), log_target=True, reduction="batchmean")


def _frozen(run_dir: Path) -> torch.nn.Module:
    model = load_backbone(NBCLIP_NAME, pretrained=None).model
    model.load_state_dict(torch.load(run_dir / "last.pt", weights_only=False)["model"])
    return model.eval().requires_grad_(False)


def train(run_dir: Path, a: argparse.Namespace) -> Path:
    """One training phase (resumable from `run_dir/last.pt`); `a.init` starts it from another
    phase's weights with a fresh optimiser and schedule."""
    torch.manual_seed(a.seed)
    backbone = load_backbone(NBCLIP_NAME, pretrained=None)
    model, transform, tokenizer = backbone.model, backbone.transform, backbone.tokenizer
    mix = {"shapes": a.shape_share, "relations": a.relation_share, "mirror": a.mirror}
    data = build_data(a.data or run_dir / "data.pt", a.n_data, a.seed, mix, transform)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.1, betas=(0.9, 0.98))
    ckpt, start = run_dir / "last.pt", 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
    elif a.init:
        model.load_state_dict(_frozen(a.init).state_dict())
    teacher = _frozen(a.teacher) if a.teacher else None
    rng = np.random.default_rng([a.seed, start])
    steps, stop = a.steps, min(a.steps, a.stop_after or a.steps)
    warmup = max(1, steps // 20)
    model.train()
    log = (run_dir / "log.jsonl").open("a")
    bar = tqdm(range(start, stop), initial=start, total=stop, desc="train nbclip-world", unit="step")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = a.lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        idx = rng.choice(data["n"], a.batch, replace=False)
        pixels, caps, row_negs = data["images"][idx], [data["captions"][i] for i in idx], [data["negatives"][i] for i in idx]
        if a.mirror_pairs:
            pixels, caps, row_negs = mirror_pairs(pixels, caps, row_negs)
        x = _normalise(pixels, transform)
        if a.negatives == "all":
            shown = set(caps)  # mirror pairs: no caption as another image's negative
            negs = [n for ns in row_negs for n in ns if n not in shown]
        else:
            negs = [ns[rng.integers(len(ns))] for ns in row_negs]
        tokens = tokenizer(caps + negs)
        img = model.encode_image(x, normalize=True)
        txt = model.encode_text(tokens, normalize=True)
        scale = model.logit_scale.exp().clamp(max=100)
        loss = contrastive_loss(img, txt[: len(caps)], txt[len(caps) :], scale)
        if a.paraphrase:
            loss = loss + paraphrase_loss(model, tokenizer, caps, row_negs, scale)
        anchored = torch.tensor([relation_of(c) is None for c in caps])
        if teacher is not None and anchored.any():
            with torch.no_grad():
                t_logits = teacher.logit_scale.exp().clamp(max=100) * teacher.encode_image(x[anchored], normalize=True) @ teacher.encode_text(tokens, normalize=True).T
            loss = loss + a.distill * distillation_loss(scale * img[anchored] @ txt.T, t_logits, a.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        log.write(json.dumps({"step": step + 1, "loss": round(loss.item(), 4), "time": time.time()}) + "\n")
        if (step + 1) % 200 == 0 or step + 1 == stop:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step + 1}, ckpt.with_suffix(".tmp"))
            ckpt.with_suffix(".tmp").replace(ckpt)
            log.flush()
    every_caption = data["captions"] + [n for negs in data["negatives"] for n in negs]
    return export(model, tokenizer(sorted(set(every_caption))).unique())


def export(model: torch.nn.Module, seen_tokens: torch.Tensor) -> Path:
    """fp16 safetensors in open_clip's own state-dict layout, so `pretrained=<file>` loads it. Rows
    of the token embedding that training never saw are still their random init: they are zeroed,
    which changes no in-world caption and lets the file compress to a fraction of its size."""
    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    unseen = torch.ones(len(state["token_embedding.weight"]), dtype=torch.bool)
    unseen[seen_tokens] = False
    state["token_embedding.weight"][unseen] = 0
    out = WEIGHTS_DIR / f"{NBCLIP_NAME}.safetensors"
    save_file(state, str(out))
    return out


def zero_shot(n: int, seed: int) -> dict:
    """Held-out scenes (a seed the training data never used): how often the shipped weights rank the
    true caption above each kind of hard negative, and above all of them at once."""
    backbone = load_backbone(NBCLIP_NAME)
    rng = random.Random(f"nbclip-heldout:{seed}")
    by_kind: dict[str, list[float]] = {}
    top1: dict[str, list[float]] = {"shapes": [], "characters": []}
    for _ in tqdm(range(n), desc="zero-shot eval", unit="img"):
        scene, cap, negs, family = example(rng, PHASE1_MIX)
        img = backbone.embed_images([render(scene, RENDER_SIDE)])
        txt = backbone.embed_texts([cap, *negs.values()])
        cos = (img @ txt.T)[0]
        for kind, c in zip(negs, cos[1:]):
            by_kind.setdefault(kind, []).append(float(cos[0] > c))
            if kind == "relation":  # by axis: the two are learned very differently
                axis = "left_right" if relation_of(cap) in HORIZONTAL else "above_below"
                by_kind.setdefault(f"relation_{axis}", []).append(float(cos[0] > c))
        top1[family].append(float(bool((cos[0] > cos[1:]).all())))
    est = {f"pairwise/{k}": proportion(np.array(v)) for k, v in sorted(by_kind.items())}
    est.update({f"r_precision/{k}": proportion(np.array(v)) for k, v in top1.items()})
    return {k: {"value": round(e.value, 3), "low": round(e.ci_low, 3), "high": round(e.ci_high, 3), "n": e.n} for k, e in est.items()}


def _phases(run_dir: Path) -> list[dict]:
    """The chain of training phases that ends in `run_dir`, first phase first (each names its `init`)."""
    phases = [json.loads((run_dir / "meta.json").read_text()) | {"run_dir": str(run_dir)}]
    while phases[0]["init"]:
        phases.insert(0, json.loads((Path(phases[0]["init"]) / "meta.json").read_text()) | {"run_dir": phases[0]["init"]})
    return phases


def _describe(phases: list[dict]) -> str:
    return "\n".join(
        f"  {i + 1}. `{p['command']}`: {p['n_data']} scenes ({p['mix']['shapes']:.0%} shape claims, {p['mix']['relations']:.0%} of them "
        f"relations{', with mirrored-word negatives' if p['mix']['mirror'] else ''}; the rest characters; seed {p['seed']}); "
        f"{p['trained_steps']} steps of a {p['steps']}-step cosine schedule, batch {p['batch']}, "
        f"{'every hard negative of each image' if p['negatives'] == 'all' else 'one random hard negative per image'} "
        f"in the contrast, AdamW lr {p['lr']}"
        + ("; a text-only loss pulling each relation caption to its paraphrase" if p.get("paraphrase") else "")
        + ("; each relation image's mirror, with the mirrored caption, added to its batch" if p.get("mirror_pairs") else "")
        + (f"; non-relation images distilled from `{p['teacher']}` (weight {p['distill']}, temperature {p['temperature']})" if p.get("teacher") else "")
        + f"; {p['minutes']:.0f} min on a 2-core CPU; final loss {p['final_loss']:.3f}."
        + (f" Note: {p['note']}." if p.get("note") else "")
        for i, p in enumerate(phases))


def write_card(run_dir: Path, n_eval: int) -> Path:
    weights = WEIGHTS_DIR / f"{NBCLIP_NAME}.safetensors"
    sha = sha256_file(weights)
    cfg = json.loads((WEIGHTS_DIR / f"{NBCLIP_NAME}.json").read_text())
    phases = _phases(run_dir)
    training = _describe(phases)
    # A teacher from outside the chain shaped the weights too: its own phases go on the card.
    for teacher in sorted({p["teacher"] for p in phases if p.get("teacher")} - {p["run_dir"] for p in phases}):
        training += f"\n- Teacher `{teacher}`, trained in phases:\n" + _describe(_phases(Path(teacher)))
    results = zero_shot(n_eval, seed=1)
    rows = "\n".join(f"| {k} | {v['value']:.3f} | [{v['low']:.3f}, {v['high']:.3f}] | {v['n']} |" for k, v in results.items())
    card = WEIGHTS_DIR / f"{NBCLIP_NAME}.md"
    card.write_text(f"""# nbclip-world — the in-domain CLIP nbeval ships

An open_clip `CLIP` ({cfg['vision_cfg']['layers']}-layer ViT, {cfg['vision_cfg']['image_size']} px, patch {cfg['vision_cfg']['patch_size']};
{cfg['text_cfg']['layers']}-layer text transformer; embed dim {cfg['embed_dim']}) registered with `open_clip.add_model_config`,
trained from scratch by `python -m nbeval.scorers.clip_train` on nbeval's synthetic world. It knows
only that world (shapes, colours, counts, relations, characters): its scores mean nothing on photos,
and raw CLIPScores from it are not comparable with any other backbone's.

- Weights: `{weights.name}` (fp16 safetensors, {weights.stat().st_size / 1e6:.1f} MB), sha256 `{sha}`.
- Preprocessing: open_clip's default for the config — bicubic resize to {cfg['vision_cfg']['image_size']} px, centre crop,
  OpenAI mean/std normalisation.
- Data: scenes of the world rendered at {RENDER_SIDE} px, captions with their hard negatives (colour, shape, count,
  relation; a swapped part for characters); characters stand at random places and sizes, half of them beside a
  shape the caption does not mention; a fifth of the images are degraded by a 64-px round trip, an eighth by noise.
- Training, in phases (each resumable; a later one starts from the earlier one's weights):
{training}

## Zero-shot accuracy on held-out scenes (n = {n_eval}, seed 1; Wilson 95% CI)
`pairwise/<kind>`: the true caption scores above the negative that changes only <kind>;
`r_precision/<family>`: above all of that scene's negatives at once.

| metric | value | 95% CI | n |
|---|---|---|---|
{rows}
""")
    return card


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", type=Path, required=True, help="checkpoints, data and log (resumable)")
    p.add_argument("--steps", type=int, default=3000, help="length of the cosine schedule")
    p.add_argument("--stop-after", type=int, default=None, help="stop (and export) at this step of the schedule")
    p.add_argument("--batch", type=int, default=96)
    p.add_argument("--negatives", choices=("one", "all"), default="all", help="hard negatives per image in the contrast")
    p.add_argument("--init", type=Path, default=None, help="run dir of an earlier phase to start from")
    p.add_argument("--teacher", type=Path, default=None,
                   help="run dir of an earlier phase whose caption ranking every non-relation image is distilled towards, "
                        "so that a phase teaching relations keeps what the teacher knew")
    p.add_argument("--distill", type=float, default=1.0, help="weight of the distillation term (with --teacher)")
    p.add_argument("--temperature", type=float, default=5.0, help="distillation temperature (with --teacher)")
    p.add_argument("--data", type=Path, default=None, help="rendered training set (default: <run-dir>/data.pt)")
    p.add_argument("--n-data", type=int, default=40000, help="rendered training scenes")
    p.add_argument("--shape-share", type=float, default=0.6, help="share of shape claims in the data (the rest: characters)")
    p.add_argument("--relation-share", type=float, default=0.35, help="share of spatial relations among the shape claims")
    p.add_argument("--mirror", action="store_true", help="give relations a mirrored-relation-word negative too")
    p.add_argument("--mirror-pairs", action="store_true",
                   help="add each relation image's mirror along its axis, with the mirrored caption, to the batch")
    p.add_argument("--paraphrase", action="store_true", help="add the text-only paraphrase loss for relation captions")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-eval", type=int, default=1000, help="held-out scenes for the card")
    p.add_argument("--card-only", action="store_true", help="only evaluate the shipped weights and write the card")
    a = p.parse_args(argv)
    if not a.card_only:
        a.run_dir.mkdir(parents=True, exist_ok=True)
        train(a.run_dir, a)
        log = [json.loads(line) for line in (a.run_dir / "log.jsonl").read_text().splitlines()]
        gaps = np.diff([r["time"] for r in log])
        meta = {"command": "python -m nbeval.scorers.clip_train " + " ".join(argv if argv is not None else sys.argv[1:]),
                "steps": a.steps, "trained_steps": log[-1]["step"], "batch": a.batch, "negatives": a.negatives,
                "init": str(a.init) if a.init else None, "n_data": a.n_data, "mirror_pairs": a.mirror_pairs, "paraphrase": a.paraphrase,
                "teacher": str(a.teacher) if a.teacher else None, "distill": a.distill, "temperature": a.temperature,
                "mix": {"shapes": a.shape_share, "relations": a.relation_share, "mirror": a.mirror}, "lr": a.lr, "seed": a.seed,
                "minutes": float(gaps[gaps < 60].sum() / 60),  # training time only, across resumes
                "final_loss": float(np.mean([r["loss"] for r in log[-50:]]))}
        (a.run_dir / "meta.json").write_text(json.dumps(meta))
    print(write_card(a.run_dir, a.n_eval).read_text())


if __name__ == "__main__":
    main()
