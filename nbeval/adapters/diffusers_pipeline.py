"""Any local diffusers pipeline as a model under test (`conf/model/diffusers.yaml`).

    nbeval run model=diffusers model.path=/path/to/pipeline suite=[counting]
    nbeval run model=diffusers model.path=… model.edit_path=/path/to/instruct-pix2pix suite=[drift]

- `path`: a folder holding a text-to-image pipeline (`model_index.json` and its components, as written
  by `save_pretrained` or a downloaded snapshot), loaded with `DiffusionPipeline.from_pretrained`,
  `local_files_only` — nothing is downloaded. `edit_path`: an instruction-edit pipeline
  (InstructPix2Pix-style: `pipe(prompt=instruction, image=…)`); only with it can the model edit.
  Edits are stateless: each turn edits the last image of the conversation with the newest instruction.
- Fingerprint: every setting that changes the images plus a sha256 of each pipeline's files
  (model_index.json, configs, tokenizer files and weights; hidden files, *.md and images are left out),
  hashed streaming, once per process for as long as the files' sizes and modification times stay the same.
  The path is not in it: the same weights in another folder share the cache.
- Seeds: turn 0 uses the request's seed (+ `seed_offset`), turn t > 0 a seed derived from it and t,
  each in its own CPU `torch.Generator`, so an image depends on its own seed only, on any device.
  Requests are batched (`max_batch`, default the run's batch size); on CPU the batch size can change
  the lowest bit of a few pixels (kernel choice), `max_batch=1` removes even that.
- Size: the pipeline generates at `size` (default: its own native size) and the image is resized
  (bicubic) to the size the suite asked for; both are recorded.
- Manifest, stored with each image in the cache index: settings, model hash, pipeline and scheduler
  classes, diffusers / transformers / torch versions, the seed, the prompt or instruction, the
  generated and delivered sizes, the batch size and the safety checker's verdict when there is one.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import time
from pathlib import Path

from PIL import Image

from nbeval.adapters.base import EditRequest, GenRequest, GenResult, ModelAdapter
from nbeval.hf import LoadOnce
from nbeval.records import folder_sha256

log = logging.getLogger(__name__)

DTYPES = ("float32", "float16", "bfloat16")
RESAMPLE = "bicubic"


def _check_pipeline_dir(path: str | os.PathLike | None, option: str) -> Path | None:
    if path is None:
        return None
    p = Path(path).expanduser()
    if not (p / "model_index.json").is_file():
        raise FileNotFoundError(f"model.{option}={str(path)!r} is not a diffusers pipeline folder (no model_index.json): "
                                "give the folder that save_pretrained wrote or a downloaded snapshot")
    return p.resolve()


def _plain(obj):
    """Hydra hands dicts over as DictConfig unless told otherwise: make them plain (JSON) values."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(obj):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover — omegaconf comes with hydra
        pass
    return obj


def _edit_seed(seed: int, turn: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{turn}".encode()).digest()[:8], "big") >> 1


def _native_size(pipe) -> int | None:
    """The pipeline's default image side: latent sample size × VAE scale factor, when it has both."""
    sample = getattr(pipe, "default_sample_size", None)
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if sample is None and denoiser is not None:
        sample = getattr(denoiser.config, "sample_size", None)
    factor = getattr(pipe, "vae_scale_factor", None)
    return sample * factor if isinstance(sample, int) and isinstance(factor, int) else None


def _call_params(pipe) -> set[str]:
    """Named parameters of the pipeline's __call__ (not its **kwargs, which would swallow anything)."""
    sig = inspect.signature(pipe.__call__)
    return {n for n, p in sig.parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


class DiffusersAdapter(ModelAdapter):
    def __init__(
        self,
        path: str,
        name: str = "diffusers",
        edit_path: str | None = None,
        dtype: str = "float32",
        device: str = "cpu",
        variant: str | None = None,
        scheduler: str | None = None,
        steps: int | None = 30,
        guidance_scale: float | None = 7.5,
        image_guidance_scale: float | None = 1.5,
        negative_prompt: str | None = None,
        size: int | None = None,
        seed_offset: int = 0,
        call_kwargs: dict | None = None,
        edit_call_kwargs: dict | None = None,
        max_batch: int | None = None,
        threads: int | None = None,
        local_files_only: bool = True,
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"model.dtype={dtype!r}: choose one of {', '.join(DTYPES)}")
        if size is not None and int(size) < 8:
            raise ValueError(f"model.size must be at least 8 pixels, got {size}")
        if max_batch is not None and int(max_batch) < 1:
            raise ValueError(f"model.max_batch must be at least 1, got {max_batch}")
        self.name = name
        self.path = _check_pipeline_dir(path, "path")
        self.edit_path = _check_pipeline_dir(edit_path, "edit_path")
        self.capabilities = frozenset({"generate", "edit"} if self.edit_path else {"generate"})
        self.dtype, self.device, self.variant, self.scheduler = dtype, device, variant, scheduler
        self.steps = None if steps is None else int(steps)
        self.guidance_scale = None if guidance_scale is None else float(guidance_scale)
        self.image_guidance_scale = None if image_guidance_scale is None else float(image_guidance_scale)
        self.negative_prompt = negative_prompt
        self.size = None if size is None else int(size)
        self.seed_offset = int(seed_offset)
        self.call_kwargs = dict(_plain(call_kwargs) or {})
        self.edit_call_kwargs = dict(_plain(edit_call_kwargs) or {})
        self.max_batch = None if max_batch is None else int(max_batch)
        self.threads = None if threads is None else int(threads)
        self.local_files_only = bool(local_files_only)
        self._pipes = {"generate": LoadOnce(), "edit": LoadOnce()}  # each loaded on its first batch

    # --- identity -------------------------------------------------------------------------------

    def settings(self) -> dict:
        s = {
            "weights_sha256": folder_sha256(self.path),
            "dtype": self.dtype,
            "device": self.device,
            "variant": self.variant,
            "scheduler": self.scheduler,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "negative_prompt": self.negative_prompt,
            "size": self.size,
            "seed_offset": self.seed_offset,
            "call_kwargs": self.call_kwargs,
            "resample": RESAMPLE,
            "generator": "cpu",
        }
        if self.edit_path:
            s |= {"edit_weights_sha256": folder_sha256(self.edit_path), "image_guidance_scale": self.image_guidance_scale,
                  "edit_call_kwargs": self.edit_call_kwargs}
        return s

    # --- loading --------------------------------------------------------------------------------

    def _pipe(self, which: str):
        """The loaded pipeline ('generate' or 'edit'); a failed load is not retried (every batch would
        pay for it again), its error fails each batch."""
        return self._pipes[which].get(lambda: self._load(self.path if which == "generate" else self.edit_path, which))

    def _load(self, path: Path, which: str):
        import torch
        import diffusers

        if self.threads:
            torch.set_num_threads(self.threads)
        t0 = time.perf_counter()
        kw = {"dtype": getattr(torch, self.dtype), "local_files_only": self.local_files_only}
        if self.variant:
            kw["variant"] = self.variant
        pipe = diffusers.DiffusionPipeline.from_pretrained(path, **kw)
        if self.scheduler:
            cls = getattr(diffusers, self.scheduler, None)
            if cls is None or not hasattr(cls, "from_config"):
                raise ValueError(f"model.scheduler={self.scheduler!r} is not a diffusers scheduler class (e.g. DDIMScheduler, EulerDiscreteScheduler)")
            pipe.scheduler = cls.from_config(pipe.scheduler.config)
        pipe = pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        self._check_call(pipe, which)
        log.info("loaded %s from %s in %.1f s (%s, %s)", type(pipe).__name__, path, time.perf_counter() - t0, self.dtype, self.device)
        return pipe

    def _options(self, which: str) -> dict:
        """Call arguments from the settings (None: the pipeline's own default, not passed)."""
        opts = {"num_inference_steps": self.steps, "guidance_scale": self.guidance_scale, "negative_prompt": self.negative_prompt}
        if which == "generate":
            opts |= {"height": self.size, "width": self.size}
        else:
            opts["image_guidance_scale"] = self.image_guidance_scale
        opts = {k: v for k, v in opts.items() if v is not None}
        return opts | (self.call_kwargs if which == "generate" else self.edit_call_kwargs)

    def _check_call(self, pipe, which: str) -> None:
        """Refuse a setting the pipeline would ignore: a silently dropped option is a wrong result."""
        params = _call_params(pipe)
        needed = {"prompt", "generator"} | ({"image"} if which == "edit" else set())
        missing = sorted(needed - params)
        if missing:
            kind = "an instruction-edit" if which == "edit" else "a text-to-image"
            raise TypeError(f"{type(pipe).__name__} does not look like {kind} pipeline: its __call__ lacks {missing}")
        unknown = sorted(set(self._options(which)) - params)
        if unknown:
            raise TypeError(f"{type(pipe).__name__} does not take {unknown}: set those options to null "
                            "(steps, guidance_scale, image_guidance_scale, negative_prompt, size) or remove them from call_kwargs")

    # --- generation -----------------------------------------------------------------------------

    def _versions(self) -> dict:
        from importlib import metadata

        out = {}
        for pkg in ("diffusers", "transformers", "torch"):
            try:
                out[pkg] = metadata.version(pkg)
            except metadata.PackageNotFoundError:
                out[pkg] = None
        return out

    def _run(self, which: str, prompts: list[str], seeds: list[int], size: int, images: list[Image.Image] | None = None) -> list[GenResult]:
        """One pipeline call for a batch; every image resized to `size`, each with its manifest."""
        import torch

        pipe = self._pipe(which)
        kw = self._options(which)
        if images is not None:
            work = self.size or _native_size(pipe) or size
            images = [im.convert("RGB").resize((work, work), Image.Resampling.BICUBIC) if im.size != (work, work) else im.convert("RGB") for im in images]
            kw["image"] = images
        if "output_type" in _call_params(pipe):
            kw["output_type"] = "pil"
        t0 = time.perf_counter()
        out = pipe(prompt=prompts, generator=[torch.Generator("cpu").manual_seed(s) for s in seeds], **kw)
        per_image = (time.perf_counter() - t0) / len(prompts)
        made = out.images if hasattr(out, "images") else out[0]
        if len(made) != len(prompts):
            raise RuntimeError(f"{type(pipe).__name__} returned {len(made)} images for {len(prompts)} prompts")
        nsfw = getattr(out, "nsfw_content_detected", None)
        path = self.path if which == "generate" else self.edit_path
        common = {
            "adapter": "diffusers",
            "settings": self.settings(),
            "model_sha256": folder_sha256(path),
            "pipeline_path": str(path),
            "pipeline_class": type(pipe).__name__,
            "scheduler_class": type(getattr(pipe, "scheduler", None)).__name__,
            "versions": self._versions(),
            "batch": len(prompts),
        }
        results = []
        for i, (img, prompt, seed) in enumerate(zip(made, prompts, seeds)):
            if not isinstance(img, Image.Image):
                raise TypeError(f"{type(pipe).__name__} returned {type(img).__name__}, not a PIL image")
            img = img.convert("RGB")
            generated = list(img.size)
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BICUBIC)
            manifest = common | {
                "seed": seed,
                "prompt" if which == "generate" else "instruction": prompt,
                "generated_size": generated,
                "size": size,
                "resized": generated != [size, size],
                "nsfw_content_detected": None if nsfw is None else bool(nsfw[i]),
            }
            if images is not None:
                manifest["input_size"] = list(images[i].size)
            results.append(GenResult(img, per_image, manifest=manifest))
        return results

    def _batched(self, which: str, prompts: list[str], seeds: list[int], sizes: list[int], images: list | None) -> list[GenResult]:
        """Pipeline calls of up to `max_batch` requests of one size; a batch that fails is retried
        one request at a time, so one bad request fails alone (a failed load fails them all)."""
        out: list[GenResult] = []
        step = self.max_batch or max(len(prompts), 1)
        i = 0
        while i < len(prompts):
            j = min(i + step, len(prompts))
            while len(set(sizes[i:j])) > 1:
                j -= 1
            if j - i == 1:
                out.append(self._one(which, prompts[i], seeds[i], sizes[i], None if images is None else images[i]))
            else:
                try:
                    out += self._run(which, prompts[i:j], seeds[i:j], sizes[i], None if images is None else images[i:j])
                except Exception:  # noqa: BLE001 — isolate the failing request below
                    if self._pipes[which].failed:
                        raise
                    out += [self._one(which, prompts[k], seeds[k], sizes[k], None if images is None else images[k]) for k in range(i, j)]
            i = j
        return out

    def _one(self, which: str, prompt: str, seed: int, size: int, image) -> GenResult:
        t0 = time.perf_counter()
        try:
            return self._run(which, [prompt], [seed], size, None if image is None else [image])[0]
        except Exception as e:  # noqa: BLE001 — any model failure becomes a per-row error
            if self._pipes[which].failed:
                raise
            return GenResult(None, time.perf_counter() - t0, f"{type(e).__name__}: {e}")

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        seeds = [(r.seed + self.seed_offset) % 2**63 for r in requests]
        return self._batched("generate", [r.prompt for r in requests], seeds, [r.size for r in requests], None)

    def edit(self, requests: list[EditRequest]) -> list[GenResult]:
        if not self.edit_path:
            return super().edit(requests)
        seeds = [_edit_seed((r.seed + self.seed_offset) % 2**63, r.turn) for r in requests]
        return self._batched("edit", [r.instructions[-1] for r in requests], seeds, [r.size for r in requests], [r.images[-1] for r in requests])
