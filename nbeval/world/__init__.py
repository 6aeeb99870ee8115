"""The synthetic world: scenes with exact ground truth, their renders, prompts and edits."""

from nbeval.world.edits import EDIT_OPS, Edit, apply_edit
from nbeval.world.layout import LayoutError, fit_text, place_shapes
from nbeval.world.prompts import NUMBER_WORDS, scene_prompt
from nbeval.world.render import render, renderer_fingerprint
from nbeval.world.scene import COLOURS, SHAPE_KINDS, SIZES, Scene, Shape, Word
from nbeval.world.vocabulary import COMMON_WORDS, RARE_LETTER_WORDS

__all__ = [
    "COLOURS",
    "COMMON_WORDS",
    "EDIT_OPS",
    "NUMBER_WORDS",
    "RARE_LETTER_WORDS",
    "SHAPE_KINDS",
    "SIZES",
    "Edit",
    "LayoutError",
    "Scene",
    "Shape",
    "Word",
    "apply_edit",
    "fit_text",
    "place_shapes",
    "render",
    "renderer_fingerprint",
    "scene_prompt",
]
