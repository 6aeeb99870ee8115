"""nbeval: an evaluation harness for reasoning-first image models.

Importing nbeval is light on purpose: torch, easyocr and open_clip load only when a model or scorer
that needs them is built.
"""

__version__ = "0.1.0"
