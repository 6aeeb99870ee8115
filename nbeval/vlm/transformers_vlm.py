"""`vlm=transformers`: a local vision-language model as the judge — `AutoModelForImageTextToText` and
`AutoProcessor` from `path` (what `save_pretrained` writes, or a downloaded snapshot), loaded with
`local_files_only`: nothing is downloaded, ever. Remote code (`trust_remote_code`) is not run.

- Prompt: the processor's chat template when it has one, with one user message whose content is the
  images then the text (what `vlm=openai_chat` sends a server); else the processor's image token once
  per image, a newline, then the text.
- Decoding: greedy (`do_sample=False`, one beam) up to `max_new_tokens`, whatever the folder's
  generation config asks; its other settings (EOS tokens, logits processors) are the model's own and,
  being files of the folder, are in the digest. The first generated token's log-softmax (over the
  scores generation chose it from, so the text and the alternatives agree) gives `top_logprobs`
  alternatives, each decoded to text, best first: the shape a server's `top_logprobs` has, so
  `option_probabilities` reads both backends the same way.
- Batches: questions with the same number of images, up to `batch_size` at a time, padded on the left.
  A batch that raises is retried one question at a time, so one bad question fails alone. An input the
  model cannot take is `unsupported`: the chat template refuses it (e.g. too many images), the processor
  cannot process it (e.g. an empty image), or generation rejects it with a ValueError / IndexError
  (e.g. image tokens that do not match the image features); any other failure (out of memory, a device
  error) is `transport`. An empty answer is a `refusal`, as from a server.
- Fingerprint: backend, the folder's sha256 (`records.folder_sha256`: weights, configs, tokenizer,
  processor and chat template; not the path, so the same files elsewhere share cached readings),
  dtype and the decoding settings. The device is not in it: it changes speed, not what is asked.
  `sha256` refuses any other files.
"""

from __future__ import annotations

import math
import threading

from nbeval.hf import LoadOnce, local_model_folder
from nbeval.records import folder_sha256
from nbeval.scorers.base import check_sha256
from nbeval.vlm.base import Answer, Judge, Question

PROTOCOL = 1  # bump when how prompts are built or answers read changes
DTYPES = ("float32", "float16", "bfloat16")
_UNSUPPORTED = (ValueError, IndexError)  # what a model raises for an input it cannot take (e.g. image tokens ≠ image features)


class _Unsupported(Exception):
    """A question this model's processor cannot turn into inputs."""


class TransformersJudge(Judge):
    name = "transformers"

    def __init__(self, path: str, device: str = "cpu", dtype: str = "float32", max_new_tokens: int = 32, top_logprobs: int = 5,
                 batch_size: int = 4, sha256: str | None = None) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"vlm.dtype={dtype!r}: choose one of {', '.join(DTYPES)}")
        if int(max_new_tokens) < 1 or int(top_logprobs) < 1 or int(batch_size) < 1:
            raise ValueError("vlm.max_new_tokens, vlm.top_logprobs and vlm.batch_size must each be at least 1")
        self.path, _ = local_model_folder(path, "vlm.path", "AutoModelForImageTextToText", "vlm",
                                          "a vision-language model such as LLaVA, Qwen2-VL, Idefics3 or Gemma 3")
        check_sha256(f"the VLM judge's files in {self.path}", folder_sha256(self.path), sha256)
        self.device, self.dtype = device, dtype
        self.max_new_tokens, self.top_logprobs, self.batch_size = int(max_new_tokens), int(top_logprobs), int(batch_size)
        self._model: LoadOnce[tuple] = LoadOnce()  # (model, processor), on the first question
        self._lock = threading.Lock()  # one generate call at a time

    def __getstate__(self) -> dict:
        """Pickled without the lock (the model pickles empty: a process loads its own)."""
        return {**self.__dict__, "_lock": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def settings(self) -> dict:
        return {"backend": self.name, "protocol": PROTOCOL, "weights_sha256": folder_sha256(self.path), "dtype": self.dtype,
                "max_new_tokens": self.max_new_tokens, "top_logprobs": self.top_logprobs, "decoding": "greedy",
                "prompt": "the processor's chat template (a user message: images, then the text); without one, image tokens + text"}

    # --- loading --------------------------------------------------------------------------------------

    def _from_pretrained(self) -> tuple:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        processor = AutoProcessor.from_pretrained(self.path, local_files_only=True)
        if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
            raise ValueError(f"{self.path} has no image-text processor (AutoProcessor gave {type(processor).__name__})")
        tokenizer = processor.tokenizer
        tokenizer.padding_side = "left"  # generation continues every row from its own last token
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForImageTextToText.from_pretrained(self.path, local_files_only=True, dtype=getattr(torch, self.dtype))
        return model.to(self.device).eval(), processor

    # --- asking ---------------------------------------------------------------------------------------

    @staticmethod
    def prompt(processor, question: Question) -> str:
        """The question as the model's own prompt text; raises _Unsupported when it cannot be one."""
        if getattr(processor, "chat_template", None):
            content = [*({"type": "image"} for _ in question.images), {"type": "text", "text": question.text}]
            try:
                return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False)
            except Exception as e:  # noqa: BLE001 — a template refuses with jinja's TemplateError, or anything it raises
                raise _Unsupported(f"the chat template refuses this question: {type(e).__name__}: {e}") from None
        token = getattr(processor, "image_token", None)
        if question.images and not token:
            raise _Unsupported(f"{type(processor).__name__} has neither a chat template nor an image token to place the images with")
        return "".join([token] * len(question.images)) + ("\n" if question.images else "") + question.text

    def _generate(self, questions: list[Question], prompts: list[str]) -> list[Answer]:
        """One generate call for questions with the same number of images."""
        import torch
        import transformers

        model, processor = self._model.get(self._from_pretrained)
        images = [[im.convert("RGB") for im in q.images] for q in questions] if questions[0].images else None
        try:
            inputs = processor(text=prompts, images=images, return_tensors="pt", padding=True)
        except Exception as e:  # noqa: BLE001 — whatever the processor cannot take (an empty image, a wrong count) is the question's
            raise _Unsupported(f"the processor cannot take it: {type(e).__name__}: {e}") from None
        inputs = inputs.to(self.device, dtype=getattr(torch, self.dtype))
        with torch.inference_mode():
            out = model.generate(**inputs, do_sample=False, num_beams=1, max_new_tokens=self.max_new_tokens,
                                 output_scores=True, return_dict_in_generate=True)
        tokenizer = processor.tokenizer
        generated = out.sequences[:, -len(out.scores):]  # decoder-only: after the prompt; encoder-decoder: after the start token
        first = torch.log_softmax(out.scores[0].float(), dim=-1)
        top = first.topk(min(self.top_logprobs, first.shape[-1]), dim=-1)
        eos = model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos]) - {None}
        meta = {"model": type(model).__name__, "logprobs": True, "batch": len(questions),
                "system_fingerprint": f"transformers {transformers.__version__}, torch {torch.__version__}, {self.dtype}"}
        answers = []
        for row, ids, lps in zip(generated.tolist(), top.indices.tolist(), top.values.tolist()):
            text = tokenizer.decode(row, skip_special_tokens=True).strip()
            finish = "stop" if eos & set(row) else "length"
            if not text:
                answers.append(Answer.failed("refusal", "an empty answer", **meta, finish_reason=finish))
                continue
            # a token the model's generation config forbids here (-inf) is no alternative
            alternatives = [(tokenizer.decode([i]), float(lp)) for i, lp in zip(ids, lps) if lp > -math.inf]
            answers.append(Answer(text, alternatives, meta=meta | {"finish_reason": finish}))
        return answers

    def _one(self, question: Question, prompt: str) -> Answer:
        try:
            return self._generate([question], [prompt])[0]
        except _Unsupported as e:
            return Answer.failed("unsupported", str(e)[:500])
        except _UNSUPPORTED as e:
            return Answer.failed("unsupported", f"{type(e).__name__}: {e}"[:500])
        except Exception as e:  # noqa: BLE001 — any other failure of one question is its answer, not the batch's
            return Answer.failed("transport", f"{type(e).__name__}: {e}"[:500])

    def ask(self, questions: list[Question]) -> list[Answer]:
        if not questions:
            return []
        _, processor = self._model.get(self._from_pretrained)
        answers: list[Answer | None] = [None] * len(questions)
        groups: dict[int, list[tuple[int, str]]] = {}
        for i, question in enumerate(questions):
            try:
                groups.setdefault(len(question.images), []).append((i, self.prompt(processor, question)))
            except _Unsupported as e:
                answers[i] = Answer.failed("unsupported", str(e)[:500])
        with self._lock:
            for group in groups.values():
                for start in range(0, len(group), self.batch_size):
                    batch = group[start : start + self.batch_size]
                    qs, prompts = [questions[i] for i, _ in batch], [p for _, p in batch]
                    try:
                        got = self._generate(qs, prompts) if len(batch) > 1 else [self._one(qs[0], prompts[0])]
                    except Exception:  # noqa: BLE001 — isolate the failing question below
                        got = [self._one(q, p) for q, p in zip(qs, prompts)]
                    for (i, _), answer in zip(batch, got):
                        answers[i] = answer
        return answers
