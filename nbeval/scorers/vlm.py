"""Scorers that read images by asking a judge (nbeval.vlm) nbeval's questions, each in the role of a
suite's instrument, so suites run unchanged on them:

- `scorer=[vlm_count]` (role `counter`): one count question per requested group, one for anything
  else present, one yes/no question per requested relation → CounterReading (counts only, no boxes);
- `scorer=[vlm_ocr]` (role `ocr`): a transcription → OCRReading;
- `scorer=[vlm_tifa]` (role `tifa`, read by `adherence`): Soft-TIFA — one yes/no question per atom of
  the world's claim (each group exists, its exact count, the relation), each scored by the judge's
  probability of the right answer → TifaReading;
- `scorer=[vlm_edit]` (role `edit`, read by the drift suites): semantic consistency and perceptual
  quality of each edit, 0–10, GEdit-Bench's pair → EditReading;
- `VLMPairwise`: which of two images matches a prompt better (what `judge=vlm_pairwise` asks the
  arena's battles, in both orders) → PairwiseReading.

A reading keeps every question, the judge's answer, the option probabilities and where they came from
("logprobs", or "text": the parsed answer alone), and what the backend said of itself (model,
system_fingerprint). A failed answer — refusal, content filter, unparsable, timeout — fails that
image's reading with its reason (a JudgeError, counted in the summary), never a right or wrong score.
The fingerprint is the judge's (backend, model, decoding) and the question templates' version.
"""

from __future__ import annotations

from PIL import Image

from nbeval.readings import CounterReading, EditReading, OCRReading, PairwiseReading, TifaReading
from nbeval.scorers.base import Scorer
from nbeval.vlm import questions as q
from nbeval.vlm.base import Answer, Judge, JudgeError, Question, option_probabilities
from nbeval.world.claims import Claim

OTHER_KEY = "other shape"  # a counter reading's key for "something else is there" (a judge counts no boxes)


def asked(question: Question, answer: Answer, probabilities: dict[str, float] | None = None, source: str | None = None) -> dict:
    """What a reading keeps of one question and its answer."""
    return {"question": question.text, "answer": answer.text, "probabilities": probabilities, "source": source,
            "model": answer.meta.get("model"), "system_fingerprint": answer.meta.get("system_fingerprint")}


def choose(question: Question, answer: Answer) -> tuple[str, dict]:
    """The option the judge gives (the most probable), and the record of it; raises JudgeError."""
    if answer.error:
        raise JudgeError(answer.error_kind or "transport", answer.error)
    probs, source = option_probabilities(answer, question.options)
    return max(probs, key=probs.get), asked(question, answer, probs, source)


class JudgeScorer(Scorer):
    """Base of the judge-based scorers: `questions` per image, `reading` from their answers."""

    uses_truth = True

    def __init__(self, judge: Judge) -> None:
        self.judge = judge

    def settings(self) -> dict:
        return {"judge": self.judge.settings(), "judge_fingerprint": self.judge.fingerprint, "templates": q.TEMPLATE_VERSION}

    def card(self) -> dict:
        return {**super().card(), "judge_class": f"{type(self.judge).__module__}.{type(self.judge).__qualname__}"}

    def questions(self, image, truth: dict) -> list[Question]:
        raise NotImplementedError

    def reading_of(self, questions: list[Question], answers: list[Answer], truth: dict) -> dict:
        raise NotImplementedError

    def read(self, images: list, truths: list[dict]) -> list[dict | JudgeError]:
        """One reading per image, or the JudgeError that stopped it: all questions of the batch go to
        the judge in one call (a server batches or runs them concurrently)."""
        asks = [self.questions(im, t) for im, t in zip(images, truths)]
        answers = self.judge.ask([x for qs in asks for x in qs])
        out, i = [], 0
        for qs, truth in zip(asks, truths):
            mine, i = answers[i : i + len(qs)], i + len(qs)
            try:
                out.append(self.reading_of(qs, mine, truth))
            except JudgeError as e:
                out.append(e)
        return out


class VLMCounter(JudgeScorer):
    """Truth: the requested groups (`groups`: colour, or None for any colour, and kind), as the
    counting suite gives them, and optionally `relations` between them (`{a, relation, b}`, a and b
    groups, relation one of the world's), as GenEval's positions need: a judge draws no boxes, so it
    is asked each relation, and its answers join the reading (`relations`, each with `holds`)."""

    name = "vlm_count"
    reading = CounterReading

    def questions(self, image: Image.Image, truth: dict) -> list[Question]:
        groups = [(g["colour"], g["kind"]) for g in truth["groups"]]
        relations = [q.relation_question(image, (r["a"]["colour"], r["a"]["kind"]), r["relation"], (r["b"]["colour"], r["b"]["kind"]))
                     for r in truth.get("relations", [])]
        return [q.count_question(image, c, k) for c, k in groups] + [q.other_question(image, groups)] + relations

    def reading_of(self, questions: list[Question], answers: list[Answer], truth: dict) -> CounterReading:
        chosen = [choose(x, a) for x, a in zip(questions, answers)]
        groups = truth["groups"]
        counts = {q.named(g["colour"], g["kind"]): int(n) for g, (n, _) in zip(groups, chosen) if int(n)}
        if chosen[len(groups)][0] == "yes":
            counts[OTHER_KEY] = 1
        reading: CounterReading = {"counts": dict(sorted(counts.items())), "objects": [], "judge": [r for _, r in chosen]}
        if "relations" in truth:
            reading["relations"] = [{**r, "holds": answer == "yes"} for r, (answer, _) in zip(truth["relations"], chosen[len(groups) + 1 :])]
        return reading


class VLMOCR(JudgeScorer):
    name = "vlm_ocr"
    reading = OCRReading
    uses_truth = False

    def questions(self, image: Image.Image, truth: dict) -> list[Question]:
        return [q.text_question(image)]

    def reading_of(self, questions: list[Question], answers: list[Answer], truth: dict) -> OCRReading:
        (question,), (answer,) = questions, answers
        if answer.error:
            raise JudgeError(answer.error_kind or "transport", answer.error)
        text = "" if answer.text.strip().strip(".\"'").upper() == q.NO_TEXT else answer.text.strip().strip("\"'")
        return {"text": text, "boxes": [], "judge": [asked(question, answer)]}


def atoms(claim: Claim) -> list[tuple[str, tuple]]:
    """Soft-TIFA's atoms of a world claim, each true of a right image: every group is there, in its
    exact count; a relation holds."""
    out = []
    for g in claim.groups:
        out.append(("exists", (g.colour, g.kind)))
        out.append(("exact", (g.colour, g.kind, g.count)))
    if claim.relation:
        a, b = claim.groups
        out.append(("relation", ((a.colour, a.kind), claim.relation, (b.colour, b.kind))))
    return out


class VLMTifa(JudgeScorer):
    """Truth: the sample's world claim (`claim`), as the adherence suite gives it, or the yes/no
    questions themselves (`atoms`), as a team's prompts file gives them."""

    name = "vlm_tifa"
    reading = TifaReading
    _ASK = {"exists": q.exists_question, "exact": q.exact_question, "relation": q.relation_question}

    def questions(self, image: Image.Image, truth: dict) -> list[Question]:
        if "atoms" in truth:
            return [q.yes_no_question(image, atom) for atom in truth["atoms"]]
        return [self._ASK[kind](image, *args) for kind, args in atoms(Claim.from_dict(truth["claim"]))]

    def reading_of(self, questions: list[Question], answers: list[Answer], truth: dict) -> TifaReading:
        out = []
        for question, answer in zip(questions, answers):
            if answer.error:
                raise JudgeError(answer.error_kind or "transport", answer.error)
            probs, source = option_probabilities(answer, question.options)
            out.append({**asked(question, answer, probs, source), "expected": "yes", "p_correct": probs["yes"]})
        return {"atoms": out}


class VLMEdit(JudgeScorer):
    """Truth: this turn's `instruction`, and in its context the `input` image the turn edited."""

    name = "vlm_edit"
    reading = EditReading

    def questions(self, image: Image.Image, truth: dict) -> list[Question]:
        pair = (truth["context"]["input"], image)
        return [q.EDIT_SC.ask(pair, instruction=truth["instruction"]), q.EDIT_PQ.ask(pair)]

    def reading_of(self, questions: list[Question], answers: list[Answer], truth: dict) -> EditReading:
        (sc, sc_rec), (pq, pq_rec) = (choose(x, a) for x, a in zip(questions, answers))
        return {"sc": int(sc) / 10, "pq": int(pq) / 10, "judge": [sc_rec, pq_rec]}


class VLMPairwise(JudgeScorer):
    """Which of two images — the truth's context `first`, then the image — matches the truth's
    `prompt` better: one order of GenArena's pairwise question; the arena's `vlm_pairwise` judge asks
    both orders."""

    name = "vlm_pairwise"
    reading = PairwiseReading

    def questions(self, image: Image.Image, truth: dict) -> list[Question]:
        return [q.PAIRWISE.ask((truth["context"]["first"], image), prompt=truth["prompt"])]

    def reading_of(self, questions: list[Question], answers: list[Answer], truth: dict) -> PairwiseReading:
        (choice, record), = (choose(x, a) for x, a in zip(questions, answers))
        return {"choice": choice, "judge": [record]}
