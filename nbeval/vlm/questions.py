"""The questions nbeval asks a judge: one template per kind, with the options a right answer is one
of, and a parser back from the text (what the world judge answers, since over HTTP only the text
arrives). `TEMPLATE_VERSION` is part of every judge-based scorer's fingerprint: changing a wording
changes answers, so cached readings are not reused across it.

Templates follow the field's judges: yes/no atoms as in TIFA / GenEval 2's Soft-TIFA, a transcription
as in OneIG's VLM text reading, 0–10 ratings of semantic consistency and perceptual quality as in
GEdit-Bench / VIEScore, and a two-image preference asked in both orders as in GenArena.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from PIL import Image

from nbeval.vlm.base import Question
from nbeval.world.prompts import NUMBER_WORDS, article, plural

TEMPLATE_VERSION = 1
YES_NO = ("yes", "no")
SCALE = tuple(str(i) for i in range(11))  # 0–10
NO_TEXT = "NONE"


@dataclass(frozen=True)
class Template:
    name: str
    text: str  # str.format pattern
    options: tuple[str, ...]
    pattern: str  # regex of the formatted text, with named groups

    def ask(self, images: tuple[Image.Image, ...] | list[Image.Image], **fields) -> Question:
        return Question(tuple(images), self.text.format(**fields), self.options)

    def match(self, text: str) -> dict[str, str] | None:
        m = re.fullmatch(self.pattern, text.strip(), flags=re.DOTALL)
        return m.groupdict() if m else None


_W = r"[a-z]+"
COUNT = Template("count", "How many {colour} {kinds} are there in the image? Answer with a number from 0 to 10.", SCALE,
                 rf"How many (?P<colour>{_W}) (?P<kinds>{_W}) are there in the image\? Answer with a number from 0 to 10\.")
COUNT_ANY = Template("count_any", "How many {kinds} are there in the image? Answer with a number from 0 to 10.", SCALE,
                     rf"How many (?P<kinds>{_W}) are there in the image\? Answer with a number from 0 to 10\.")
OTHER = Template("other", "Is there any shape in the image other than {things}? Answer yes or no.", YES_NO,
                 r"Is there any shape in the image other than (?P<things>.+)\? Answer yes or no\.")
TEXT = Template("text", f"What text is written in the image? Answer with the text only, or {NO_TEXT} if there is none.", (),
                rf"What text is written in the image\? Answer with the text only, or {NO_TEXT} if there is none\.")
EXACT = Template("exact", "Are there exactly {number} {colour} {kinds} in the image? Answer yes or no.", YES_NO,
                 rf"Are there exactly (?P<number>{_W}) (?P<colour>{_W}) (?P<kinds>{_W}) in the image\? Answer yes or no\.")
EXISTS = Template("exists", "Is there {article} {colour} {kind} in the image? Answer yes or no.", YES_NO,
                  rf"Is there (?:a|an) (?P<colour>{_W}) (?P<kind>{_W}) in the image\? Answer yes or no\.")
RELATION = Template("relation", "Is the {a} {relation} the {b}? Answer yes or no.", YES_NO,  # a, b: "[colour ]kind"
                    rf"Is the (?:(?P<colour>{_W}) )?(?P<kind>{_W}) (?P<relation>to the left of|to the right of|above|below) "
                    rf"the (?:(?P<colour2>{_W}) )?(?P<kind2>{_W})\? Answer yes or no\.")
EDIT_SC = Template("edit_sc", 'The second image should be the first one after this edit: "{instruction}" How well does the second image '
                   "make exactly that edit and change nothing else? Rate it from 0 (not at all) to 10 (perfectly). Answer with a number.", SCALE,
                   r'The second image should be the first one after this edit: "(?P<instruction>.+)" How well does the second image '
                   r"make exactly that edit and change nothing else\? Rate it from 0 \(not at all\) to 10 \(perfectly\)\. Answer with a number\.")
EDIT_PQ = Template("edit_pq", "How clean is the second image: free of blur, noise, smudges and broken shapes? Rate it from 0 (very poor) "
                   "to 10 (perfect). Answer with a number.", SCALE,
                   r"How clean is the second image: free of blur, noise, smudges and broken shapes\? Rate it from 0 \(very poor\) "
                   r"to 10 \(perfect\)\. Answer with a number\.")
PAIRWISE = Template("pairwise", 'Which image matches the description "{prompt}" better: the first or the second? Answer first, second or tie.',
                    ("first", "second", "tie"),
                    r'Which image matches the description "(?P<prompt>.+)" better: the first or the second\? Answer first, second or tie\.')
TEMPLATES: tuple[Template, ...] = (COUNT, COUNT_ANY, OTHER, TEXT, EXACT, EXISTS, RELATION, EDIT_SC, EDIT_PQ, PAIRWISE)


def singular(kinds: str) -> str:
    return kinds[:-1] if kinds.endswith("s") else kinds


def named(colour: str | None, kind: str) -> str:
    """'red circle', or 'circle' when any colour will do."""
    return f"{colour} {kind}" if colour else kind


def things(groups: list[tuple[str | None, str]]) -> str:
    """'red circles and blue squares': the (colour or None, kind) groups a question names."""
    names = [named(colour, plural(kind, 2)) for colour, kind in groups]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def parse_things(text: str) -> list[tuple[str | None, str]]:
    parts = [p.split() for p in re.split(r", | and ", text)]
    return [(w[0] if len(w) == 2 else None, singular(w[-1])) for w in parts if len(w) in (1, 2)]


def count_question(image: Image.Image, colour: str | None, kind: str) -> Question:
    """How many `colour` `kind`s; of any colour (COUNT_ANY) when `colour` is None."""
    if colour is None:
        return COUNT_ANY.ask([image], kinds=plural(kind, 2))
    return COUNT.ask([image], colour=colour, kinds=plural(kind, 2))


def other_question(image: Image.Image, groups: list[tuple[str, str]]) -> Question:
    return OTHER.ask([image], things=things(groups))


def text_question(image: Image.Image) -> Question:
    return TEXT.ask([image])


def exact_question(image: Image.Image, colour: str, kind: str, count: int) -> Question:
    return EXACT.ask([image], number=NUMBER_WORDS[count], colour=colour, kinds=plural(kind, count))


def exists_question(image: Image.Image, colour: str, kind: str) -> Question:
    return EXISTS.ask([image], article=article(colour), colour=colour, kind=kind)


def relation_question(image: Image.Image, a: tuple[str | None, str], relation: str, b: tuple[str | None, str]) -> Question:
    """Whether `a` (colour or None, kind) stands `relation` `b`."""
    return RELATION.ask([image], a=named(*a), relation=relation, b=named(*b))


def yes_no_question(image: Image.Image, text: str) -> Question:
    """A question of one's own that a right image answers "yes" (a prompts file's atom), asked as the
    templates ask theirs."""
    text = text.strip()
    return Question((image,), text if text.endswith("Answer yes or no.") else f"{text} Answer yes or no.", YES_NO)


def which(text: str) -> tuple[Template, dict[str, str]] | None:
    """The template a question's text was made from, and its fields."""
    for t in TEMPLATES:
        if (fields := t.match(text)) is not None:
            return t, fields
    return None
