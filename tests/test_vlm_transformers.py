"""`vlm=transformers` on tiny randomly initialised LLaVA models that the test builds and saves
(a 1-layer CLIP vision tower, a 1-layer Llama, a word-level tokenizer trained on nothing but a word
list written here, a CLIP image processor): nothing is downloaded. A random model proves the code path
and its shapes — prompts, batching, the first token's alternatives, failures, the fingerprint, the
run — never the quality of a judge or of any metric read with it."""

from __future__ import annotations

import json
import math
import os
import shutil

import pandas as pd
import pytest
from PIL import Image

from conftest import evaluate
from nbeval.vlm import questions as q
from nbeval.vlm.base import Question, option_probabilities

if os.environ.get("CI"):  # CI installs the test extra, which has transformers: missing there is a failure
    import transformers  # noqa: F401
else:
    pytest.importorskip("transformers", reason="pip install -e '.[vlm]'")

SPECIAL = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]
QUESTION_WORDS = ("how many are there in the image answer with a number from to is any shape other than or "
                  "red blue green circles squares triangles and ? .").split()
OPTIONS = ["yes", "no", *q.SCALE]
# Refuses a third image, as some real VLM templates refuse more images than the model was trained on.
TEMPLATE = ("{% if messages[0]['content'] | selectattr('type', 'equalto', 'image') | list | length > 2 %}"
            "{{ raise_exception('this model takes at most two images') }}{% endif %}"
            "{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }} {% endif %}"
            "{% endfor %}{% endfor %}{% if add_generation_prompt %}answer {% endif %}")


def _tiny_vlm(out, words: list[str], chat_template: str | None, seed: int = 0):
    """A randomly initialised LlavaForConditionalGeneration (~10k parameters, ~50 KB) and its
    processor, written with save_pretrained. Its generation config asks for sampling (the judge must
    decode greedily anyway) and forbids the special tokens as a first token, so an answer is never
    empty; `words` are its whole vocabulary besides the special tokens."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, GenerationConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast)

    vocab = {w: i for i, w in enumerate(dict.fromkeys([*SPECIAL, *words]))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                        extra_special_tokens={"image_token": "<image>"})
    image_processor = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    # 16 px / 8 px patches = 4 image tokens; the CLS token is dropped ("default" strategy)
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=chat_template)
    ids = {t: vocab[t] for t in SPECIAL}
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1, image_size=16, patch_size=8),
        text_config=LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_attention_heads=2, num_key_value_heads=2,
                                num_hidden_layers=1, max_position_embeddings=128, bos_token_id=ids["<s>"], eos_token_id=ids["</s>"],
                                pad_token_id=ids["<pad>"]),
        image_token_id=ids["<image>"], vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config = GenerationConfig(do_sample=True, temperature=0.7, bos_token_id=ids["<s>"], eos_token_id=ids["</s>"],
                                               pad_token_id=ids["<pad>"], begin_suppress_tokens=list(ids.values()))
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """The judge under test: a chat template, and every option word in its vocabulary."""
    return _tiny_vlm(tmp_path_factory.mktemp("vlm") / "llava", [*OPTIONS, *QUESTION_WORDS], TEMPLATE)


def _judge(path, **kw):
    from nbeval.vlm.transformers_vlm import TransformersJudge

    return TransformersJudge(str(path), **kw)


def _image(colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> Image.Image:
    return Image.new("RGB", size, colour)


def _questions() -> list[Question]:
    """Questions of nbeval's own templates with 1, 2 and 0 images, interleaved, of unequal lengths."""
    red, blue = _image((220, 30, 30)), _image((30, 30, 220), (24, 64))
    return [q.count_question(red, "red", "circle"), q.other_question(blue, [("red", "circle"), ("blue", "square")]),
            q.EDIT_PQ.ask([red, blue]), q.count_question(blue, "green", "triangle"), Question((), "Is there any shape? Answer yes or no.", q.YES_NO),
            q.exists_question(red, "blue", "square"), q.EDIT_PQ.ask([blue, red])]


def test_answers_come_one_per_question_in_order_with_first_token_alternatives(tiny):
    qs = _questions()
    answers = _judge(tiny).ask(qs)
    assert len(answers) == len(qs)
    for answer in answers:
        assert answer.error is None and answer.text
        assert len(answer.top_logprobs) == 5
        logprobs = [lp for _, lp in answer.top_logprobs]
        assert logprobs == sorted(logprobs, reverse=True) and sum(math.exp(lp) for lp in logprobs) <= 1 + 1e-6
        assert answer.meta["model"] == "LlavaForConditionalGeneration" and answer.meta["finish_reason"] in ("stop", "length")
        # greedy: the text starts with the best alternative (the tokenizer joins words with spaces)
        assert answer.text.split()[0] == answer.top_logprobs[0][0]
    # in order: each answer is the one the question gets alone
    alone = _judge(tiny, batch_size=1)
    for question, answer in zip(qs, answers):
        (single,) = alone.ask([question])
        assert single.text == answer.text
        assert [t for t, _ in single.top_logprobs] == [t for t, _ in answer.top_logprobs]
        assert [lp for _, lp in single.top_logprobs] == pytest.approx([lp for _, lp in answer.top_logprobs], abs=1e-4)


def test_greedy_decoding_is_deterministic_although_the_folder_asks_for_sampling(tiny):
    qs = _questions()
    first = [(a.text, a.top_logprobs) for a in _judge(tiny).ask(qs)]
    again = [(a.text, a.top_logprobs) for a in _judge(tiny, batch_size=3).ask(qs[::-1])[::-1]]  # a fresh load, other batches
    assert [t for t, _ in first] == [t for t, _ in again]
    for (_, a), (_, b) in zip(first, again):
        assert [lp for _, lp in a] == pytest.approx([lp for _, lp in b], abs=1e-4)
    assert len({t for t, _ in first}) > 1  # the answers do depend on the question


def test_option_probabilities_come_from_the_first_token_logprobs(tiny):
    judge = _judge(tiny, top_logprobs=len(SPECIAL) + len(OPTIONS) + len(QUESTION_WORDS))  # every token: every option is an alternative
    qs = [q.count_question(_image((220, 30, 30)), "red", "circle"), q.exists_question(_image((30, 30, 220)), "blue", "square")]
    for question, answer in zip(qs, judge.ask(qs)):
        probs, source = option_probabilities(answer, question.options)
        assert source == "logprobs" and set(probs) == set(question.options) and sum(probs.values()) == pytest.approx(1.0)
        top = dict(answer.top_logprobs)
        mass = sum(math.exp(top[o]) for o in question.options)
        assert all(probs[o] == pytest.approx(math.exp(top[o]) / mass) for o in question.options)
        assert sum(math.exp(lp) for lp in top.values()) == pytest.approx(1.0, abs=1e-5)  # the whole distribution but the forbidden tokens


def test_a_question_the_model_cannot_take_fails_alone(tiny):
    red, blue = _image((220, 30, 30)), _image((30, 30, 220))
    qs = [q.count_question(red, "red", "circle"), q.count_question(Image.new("RGB", (0, 0)), "red", "circle"),
          q.EDIT_PQ.ask([red, blue, red]), q.count_question(blue, "blue", "square")]
    answers = _judge(tiny).ask(qs)
    assert [a.error_kind for a in answers] == [None, "unsupported", "unsupported", None]
    assert "at most two images" in answers[2].error and answers[1].error
    alone = _judge(tiny, batch_size=1)
    assert [a.text for i in (0, 3) for a in alone.ask([qs[i]])] == [answers[0].text, answers[3].text]


def test_fingerprint_follows_the_files_and_settings_not_the_folder(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    copy = shutil.copytree(tiny, tmp_path / "copy")
    (copy / "README.md").write_text("docs do not change answers")
    base = _judge(tiny)
    assert str(tiny) not in json.dumps(base.settings()) and base.settings()["decoding"] == "greedy"
    assert _judge(copy).fingerprint == base.fingerprint  # the same files elsewhere: the same judge
    assert _judge(tiny, device="cuda").fingerprint == base.fingerprint  # where it runs is not what it answers
    assert _judge(tiny, dtype="bfloat16").fingerprint != base.fingerprint
    assert _judge(tiny, max_new_tokens=8).fingerprint != base.fingerprint
    assert _judge(tiny, top_logprobs=3).fingerprint != base.fingerprint

    weights = copy / "model.safetensors"
    tensors = load_file(weights)
    name = min(tensors)
    tensors[name].view(-1)[0] += 1e-3
    save_file(tensors, weights, metadata={"format": "pt"})
    assert _judge(copy).fingerprint != base.fingerprint


def test_refusals_name_the_problem(tiny, tmp_path):
    from transformers import LlamaConfig

    from nbeval.records import folder_sha256

    digest = folder_sha256(tiny)
    assert _judge(tiny, sha256=digest).settings()["weights_sha256"] == digest
    with pytest.raises(ValueError, match="but the config expects"):
        _judge(tiny, sha256="0" * 64)
    with pytest.raises(FileNotFoundError, match="Nothing is downloaded"):
        _judge(tmp_path / "no-such-model")
    with pytest.raises(ValueError, match="no config.json"):
        _judge(tmp_path)
    LlamaConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_attention_heads=1, num_hidden_layers=1).save_pretrained(tmp_path / "llm")
    with pytest.raises(ValueError, match="AutoModelForImageTextToText does not load"):
        _judge(tmp_path / "llm")
    with pytest.raises(ValueError, match="vlm.dtype"):
        _judge(tiny, dtype="float8")




def test_the_model_loads_once_a_failed_load_is_raised_again_and_a_pickle_carries_no_weights(tiny, tmp_path):
    import pickle

    folder = shutil.copytree(tiny, tmp_path / "llava")
    weights = folder / "model.safetensors"
    saved = weights.read_bytes()
    judge = _judge(folder)  # checks the folder, loads nothing yet
    weights.unlink()
    with pytest.raises(OSError) as first:
        judge.ask(_questions()[:1])
    weights.write_bytes(saved)  # the files are back, but the failure is the run's setup error: not retried
    with pytest.raises(OSError) as again:
        judge.ask(_questions()[:1])
    assert again.value is first.value

    judge = _judge(folder)
    (answer,) = judge.ask(_questions()[:1])
    weights.unlink()  # loaded: it answers without the files
    assert judge.ask(_questions()[:1])[0].text == answer.text
    copy = pickle.loads(pickle.dumps(judge))
    assert len(pickle.dumps(judge)) < 10_000  # the model (~50 KB) stays behind: a process loads its own
    with pytest.raises(OSError):
        copy.ask(_questions()[:1])
def test_a_counting_run_with_a_judge_that_names_no_option_counts_every_reading_as_failed(tmp_path, compose_cfg):
    """A random model whose vocabulary has no number and no yes/no, and no chat template (the plain
    prompt: image tokens, then the text): every answer is unparsable, so every reading fails with
    that reason, is counted, and none is scored right or wrong."""
    from nbeval.records import folder_sha256

    folder = _tiny_vlm(tmp_path / "wordless", ["maybe", "perhaps", "unclear", *QUESTION_WORDS], None, seed=1)
    cfg = compose_cfg(["model=oracle", "suite=[counting]", "n=2", "scorer=[vlm_count]", "vlm=transformers", f"vlm.path={folder}"])
    res = evaluate(cfg, tmp_path / "out")
    judge = res["scorers"]["counter"]["judge"]
    assert judge["backend"] == "transformers" and judge["weights_sha256"] == folder_sha256(folder)
    rec = res["suites"]["counting"]
    assert rec["n_samples"] == 2 and rec["n_failed_generations"] == 0 and rec["n_failed_scores"] == 2
    assert set(rec["failure_reasons"]) == {"unparsable"}
    scores = pd.read_parquet(tmp_path / "out" / "counting" / "scores.parquet")
    failed = scores[scores["error"].notna()]
    assert failed["sample_id"].nunique() == 2 and failed["value"].isna().all()
    assert failed["error"].str.contains("unparsable").all()
    assert scores.loc[scores["error"].isna(), "value"].isna().all()  # no right or wrong answer anywhere
