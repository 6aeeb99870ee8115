"""nbeval's reference model: plan → masked autoregressive continuous tokens → per-token diffusion head →
decoder. One readable file per part; `model.ReferenceModel` puts them together, `train.py` trains them."""

from pathlib import Path

CHECKPOINTS = Path(__file__).parent / "checkpoints"  # the shipped checkpoints, with their cards
