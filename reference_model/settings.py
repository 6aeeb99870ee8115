"""The reference model's switches and sampling knobs, apart from the model: the adapter builds and
fingerprints them without importing torch (a warm run never loads the model)."""

from __future__ import annotations

from dataclasses import dataclass

PLAN_MODES = ("learned", "none", "truth")
HEADS = ("diffusion", "regression")


@dataclass(frozen=True)
class Settings:
    plan: str = "learned"  # learned planner | none (prompt only) | truth (the sample's scene, an upper bound)
    thought: bool = True  # condition on the thought image (the plan drawn: coarse shapes and words)
    glyphs: bool = True  # the thought image carries the planned words
    head: str = "diffusion"
    edit_context: bool = True  # keep the tokens of regions the new plan did not change
    steps: int = 2  # masked-generation steps
    head_steps: int = 3  # DDIM steps of the diffusion head
    temperature: float = 1.0
    cfg_scale: float = 1.0
    planner_temperature: float = 1.0  # layout: where things go
    planner_content_temperature: float = 0.0  # content: which objects, how many, which characters
    planner_edit_temperature: float = 0.0  # edits, every token: unchanged things are copied, not re-placed

    def __post_init__(self) -> None:
        if self.plan not in PLAN_MODES:
            raise ValueError(f"plan must be one of {PLAN_MODES}, got {self.plan!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.steps < 1 or self.head_steps < 1:
            raise ValueError("steps and head_steps must be at least 1")
