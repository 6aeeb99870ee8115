"""The reference model put together: plan → generate tokens → decode, and multi-turn editing.

`ReferenceModel.load(path)` reads the shipped safetensors checkpoint; the switches in `Settings` are
the ablations (planner off / learned / ground truth, thought image on/off, its words on/off, diffusion
vs regression head, edit context on/off) and the sampling knobs. An image depends on its own sample only
(prompt, plan, seed): each is planned and drawn alone on one thread (several side by side), so neither
its batch nor the machine's thread count can change a bit.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import torch
from PIL import Image
from safetensors.torch import load_file

from nbeval.world import Scene
from nbeval.world.edits import changed_boxes
from reference_model import plan
from reference_model.generator import Generator, collate_prefix, prefix_items
from reference_model.glyph import thought_tokens
from reference_model.planner import Planner
from reference_model.settings import Settings
from reference_model.tokenizer import IMAGE_SIZE, Geometry, Tokenizer, to_images, to_tensor

Context = tuple[torch.Tensor, torch.Tensor]  # an edit's previous tokens (n, d), and which to keep (n,)
T = TypeVar("T")
REMEMBERED = 8192  # images whose plan and tokens are kept for editing (64 KB each at 256 tokens)


def image_key(img: Image.Image) -> str:
    return hashlib.sha256(img.convert("RGB").tobytes() + repr(img.size).encode()).hexdigest()


def changed_tokens(before: Scene, after: Scene, grid: int = Geometry().grid) -> torch.Tensor:
    """(grid²,) bool: token cells touched by anything the new plan added, removed, moved or changed."""
    mask = torch.zeros(grid, grid, dtype=torch.bool)
    for x0, y0, x1, y1 in changed_boxes(before, after):
        c0, c1 = int(x0 * grid), int(min(0.999, x1) * grid)
        r0, r1 = int(y0 * grid), int(min(0.999, y1) * grid)
        mask[r0 : r1 + 1, c0 : c1 + 1] = True
    return mask.flatten()


class ReferenceModel:
    def __init__(self, tokenizer: Tokenizer, planner: Planner, generator: Generator, meta: dict, device: str = "cpu") -> None:
        self.tokenizer, self.planner, self.generator = (m.to(device).eval() for m in (tokenizer, planner, generator))
        self.meta, self.device = meta, device
        # image key → (the plan it was drawn from, its tokens): an edit of this model's own image starts
        # from what it drew, not from a re-encoding of its pixels (a tokenizer round trip every turn)
        self._drawn: OrderedDict[str, tuple[list[int] | None, torch.Tensor]] = OrderedDict()

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> ReferenceModel:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"reference model checkpoint {path} not found")
        tensors = load_file(str(path))
        meta = json.loads(path.with_suffix(".json").read_text())
        # The geometry the tokenizer stage trained with; checkpoints from before it was configurable have none.
        geometry = Geometry.from_dict(meta["stages"]["tokenizer"]["config"].get("geometry"))
        sketch_px = meta["stages"]["generator"]["config"].get("sketch_px")  # None: trained on words only
        parts = {"tokenizer": Tokenizer(geometry), "planner": Planner(), "generator": Generator(geometry, sketch_px=sketch_px)}
        for name, module in parts.items():
            state = {k[len(name) + 1 :]: v.float() for k, v in tensors.items() if k.startswith(name + ".")}
            module.load_state_dict(state)
        return cls(parts["tokenizer"], parts["planner"], parts["generator"], meta, device)

    # --- planning ---------------------------------------------------------------------------------
    def plan(self, prompt: str, seed: int, settings: Settings, previous: list[int] | None = None) -> list[int]:
        g = torch.Generator().manual_seed(seed)
        if previous is not None:
            return self.planner.sample(prompt, g, previous, settings.planner_edit_temperature, settings.planner_edit_temperature)
        return self.planner.sample(prompt, g, previous, settings.planner_temperature, settings.planner_content_temperature)

    def _conversation_plan(self, prompt: str, instructions: tuple[str, ...], seed: int, settings: Settings) -> list[int]:
        """Re-plan a conversation from its text (for an image this model did not draw itself)."""
        tokens = self.plan(prompt, seed, settings)
        for turn, instruction in enumerate(instructions, start=1):
            tokens = self.plan(instruction, seed + turn, settings, previous=tokens)
        return tokens

    # --- drawing ----------------------------------------------------------------------------------
    def _draw(self, prompt: str, scene: Scene | None, seed: int, settings: Settings, context: Context | None = None) -> tuple[Image.Image, torch.Tensor]:
        """One image and its tokens (an edit: drawn in its context)."""
        known, keep = context or (None, None)
        drawn = Scene() if scene is None or not settings.thought else scene if settings.glyphs else Scene(shapes=scene.shapes)
        tokens = self.generator.sample(
            collate_prefix([prefix_items(prompt, scene)]).to(self.device),
            thought_tokens([drawn], self.tokenizer, self.generator.sketch_px),
            [torch.Generator().manual_seed(seed)],
            None if known is None else known[None], None if keep is None else keep[None],
            steps=settings.steps, head_steps=settings.head_steps, temperature=settings.temperature,
            cfg_scale=settings.cfg_scale, head=settings.head,
        )
        return to_images(self.tokenizer.from_tokens(tokens))[0], tokens[0]

    def generate(self, prompts: list[str], seeds: list[int], settings: Settings, truths: list[Scene | None] | None = None, size: int = IMAGE_SIZE) -> list[Image.Image]:
        """One image per prompt. With `settings.plan == "truth"`, `truths` gives each image's scene."""
        truths = truths or [None] * len(prompts)

        def one(i: int) -> tuple[list[int] | None, Image.Image, torch.Tensor]:
            planned, scene = self._plan_for(prompts[i], seeds[i], settings, truths[i])
            return planned, *self._draw(prompts[i], scene, seeds[i], settings)

        return [self._remember(_resize(img, size), planned, tokens) for planned, img, tokens in side_by_side(one, len(prompts))]

    def _remember(self, img: Image.Image, planned: list[int] | None, tokens: torch.Tensor) -> Image.Image:
        self._drawn[image_key(img)] = (planned, tokens)
        while len(self._drawn) > REMEMBERED:
            self._drawn.popitem(last=False)
        return img

    def drawn(self, image: Image.Image) -> tuple[list[int] | None, torch.Tensor | None]:
        """The plan and tokens this model drew `image` from; (None, None) if it did not draw it (or no
        longer remembers it)."""
        return self._drawn.get(image_key(image), (None, None))

    def _plan_for(self, prompt: str, seed: int, settings: Settings, truth: Scene | None, previous: list[int] | None = None) -> tuple[list[int] | None, Scene | None]:
        if settings.plan == "none":
            return None, None
        if settings.plan == "truth":
            if truth is None:
                raise ValueError("plan='truth' needs the sample's scene")
            tokens = plan.encode(truth)
        else:
            tokens = self.plan(prompt, seed, settings, previous)
        return tokens, plan.decode(tokens)

    def edit(self, prompts: list[str], conversations: list[tuple[str, ...]], images: list[Image.Image], seeds: list[int], settings: Settings, truths: list[Scene | None] | None = None, size: int = IMAGE_SIZE) -> list[Image.Image]:
        """Apply each conversation's last instruction to its image (the previous turn), knowing the
        conversation so far; the edits are drawn side by side like first turns.

        With edit context, the tokens the new plan leaves unchanged are kept exactly: the previous
        turn's own tokens when this model drew it, else the image encoded (someone else's image, or
        one from the cache of another process)."""
        truths = truths or [None] * len(prompts)

        def one(i: int) -> tuple[list[int] | None, Image.Image, torch.Tensor]:
            conversation = conversations[i]
            planned, scene, context = self._edit_plan(prompts[i], conversation, images[i], seeds[i], truths[i], settings)
            return planned, *self._draw(conversation[-1], scene, seeds[i] + len(conversation), settings, context)

        return [self._remember(_resize(img, size), planned, tokens) for planned, img, tokens in side_by_side(one, len(prompts))]

    def _edit_plan(self, prompt: str, instructions: tuple[str, ...], image: Image.Image, seed: int, truth: Scene | None, settings: Settings) -> tuple[list[int] | None, Scene | None, Context | None]:
        """The new plan and the context it is drawn in: the previous tokens and which of them to keep
        (called inside `side_by_side`: on one thread, without gradients)."""
        previous, drew = self.drawn(image)
        if previous is None and settings.plan == "learned":
            previous = self._conversation_plan(prompt, instructions[:-1], seed, settings)
        tokens, scene = self._plan_for(instructions[-1], seed + len(instructions), settings, truth, previous)
        if not settings.edit_context or previous is None or scene is None:
            return tokens, scene, None
        if drew is None:
            drew = self.tokenizer.to_tokens(to_tensor([_resize(image, IMAGE_SIZE)]).to(self.device))[0]
        return tokens, scene, (drew, ~changed_tokens(plan.decode(previous), scene, self.tokenizer.geometry.grid).to(self.device))


_threads = threading.Lock()  # one batch at a time owns torch's (process-wide) thread setting


def side_by_side(job: Callable[[int], T], n: int) -> list[T]:
    """job(0), …, job(n - 1), each alone on one thread, as many at once as torch had threads: batched
    matrix products round differently with the batch's size and padding, threaded reductions with the
    thread count, and an image must depend on neither (the cache key cannot know them). The plan is
    made in the job too: the planner's logits also move (in the last bits) with the thread count."""

    @torch.no_grad()  # grad mode is per thread
    def run(i: int) -> T:
        return job(i)

    with one_thread() as workers, ThreadPoolExecutor(max(1, min(workers, n))) as pool:
        return list(pool.map(run, range(n)))


@contextmanager
def one_thread() -> Iterator[int]:
    """Torch on one intra-op thread for the block (sampled tokens moved by 1e-5 between 1 and 2
    threads); yields the thread count it had, for drawing that many images side by side."""
    with _threads:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield threads
        finally:
            torch.set_num_threads(threads)


def _resize(img: Image.Image, size: int) -> Image.Image:
    return img if img.width == size else img.resize((size, size), Image.Resampling.BICUBIC)
