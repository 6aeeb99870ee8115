"""Regenerate the default reference model's golden image (only when the default checkpoint changes on purpose):

    python tests/golden/make.py
"""

import json
from pathlib import Path

from nbeval.adapters.reference import ReferenceAdapter
from reference_model.model import Settings

HERE = Path(__file__).parent
PROMPT, SEED = 'Three red circles and two blue squares. Write "JAZZ".', 0

if __name__ == "__main__":
    adapter = ReferenceAdapter()
    (img,) = adapter.model.generate([PROMPT], [SEED], Settings(), size=128)
    img.save(HERE / "reference.png")
    facts = {"checkpoint": adapter.checkpoint.name, "checkpoint_sha256": adapter.settings()["checkpoint_sha256"], "prompt": PROMPT, "seed": SEED}
    (HERE / "reference.json").write_text(json.dumps(facts, indent=1) + "\n")
    print("wrote", HERE / "reference.png")
