"""Scorers read images. Concrete scorers are imported by Hydra `_target_` so their backends load lazily."""

from nbeval.scorers.base import Scorer

__all__ = ["Scorer"]
