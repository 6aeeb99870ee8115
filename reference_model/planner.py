"""The planner ("think"): prompt bytes → plan tokens, a small causal transformer trained with cross-entropy.

Bytes, not words, so any spelling in quotes survives into the plan's characters. For an edit, the
previous plan goes in front of the instruction (`<prev> plan… bytes…`) and the planner writes the new
plan, so unchanged things are copied and the changed one is re-planned. Sampling is constrained by
`plan.Grammar`: plans are always well formed and never place an object on top of another.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reference_model import plan
from reference_model.data import Example
from reference_model.transformer import Block

BYTE_OFFSET = len(plan.VOCAB)  # plan tokens first, then the 256 byte values
VOCAB_SIZE = BYTE_OFFSET + 256
MAX_PROMPT = 160
MAX_LEN = 384


def prompt_tokens(prompt: str, previous: list[int] | None = None) -> list[int]:
    """Planner input: [<prev> previous plan…] prompt bytes, then <plan>."""
    prev = [plan.PREV, *previous] if previous else []
    return prev + [BYTE_OFFSET + b for b in prompt.encode("utf-8")[:MAX_PROMPT]] + [plan.PLAN]


class Planner(nn.Module):
    def __init__(self, dim: int = 160, depth: int = 4, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB_SIZE, dim)
        self.pos = nn.Embedding(MAX_LEN, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, len(plan.VOCAB))

    def forward(self, tokens: torch.Tensor, start: int = 0, past: list | None = None) -> tuple[torch.Tensor, list]:
        t = tokens.shape[1]
        x = self.embed(tokens) + self.pos(torch.arange(start, start + t, device=tokens.device))
        total = start + t
        mask = torch.ones(t, total, dtype=torch.bool, device=tokens.device).tril(diagonal=start)
        kvs = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, mask, None if past is None else past[i])
            kvs.append(kv if past is None else (torch.cat([past[i][0], kv[0]], 2), torch.cat([past[i][1], kv[1]], 2)))
        return self.out(self.norm(x)), kvs

    def loss(self, examples: list[Example], device: str) -> torch.Tensor:
        """Cross-entropy on the plan tokens only (the prompt is given)."""
        seqs, starts = [], []
        for e in examples:
            prefix = prompt_tokens(e.prompt, plan.encode(plan.quantise(e.before)) if e.before is not None else None)
            seqs.append((prefix + plan.encode(e.scene))[:MAX_LEN])
            starts.append(len(prefix))
        width = max(map(len, seqs))
        tokens = torch.full((len(seqs), width), plan.PAD, dtype=torch.long)
        targets = torch.full((len(seqs), width), -100, dtype=torch.long)
        for i, (s, st) in enumerate(zip(seqs, starts)):
            tokens[i, : len(s)] = torch.tensor(s)
            targets[i, st - 1 : len(s) - 1] = torch.tensor(s[st:])
        logits, _ = self(tokens.to(device))
        return F.cross_entropy(logits.flatten(0, 1), targets.to(device).flatten(), ignore_index=-100)

    @torch.no_grad()
    def sample(self, prompt: str, generator: torch.Generator, previous: list[int] | None = None, temperature: float = 1.0, content_temperature: float = 0.0, max_tokens: int = 160) -> list[int]:
        """Plan tokens (ending in <end>) for a prompt, sampled under the grammar's constraints.

        What the prompt determines (objects, counts, characters) is decided at `content_temperature`
        (0 = most likely); where things go (position and height bins) is sampled at `temperature`,
        so layouts vary with the seed while the content stays what was asked for."""
        grammar = plan.Grammar()
        layout = set(grammar.x + grammar.y + grammar.h)
        prefix = prompt_tokens(prompt, previous)
        device = self.out.weight.device
        logits, past = self(torch.tensor([prefix], device=device))
        out: list[int] = []
        pos = len(prefix)
        for _ in range(max_tokens):
            allowed = grammar.allowed(out)
            row = logits[0, -1].float()
            masked = torch.full_like(row, float("-inf"))
            masked[allowed] = row[allowed]
            temp = temperature if allowed[0] in layout else content_temperature
            if temp <= 0:
                tok = int(masked.argmax())
            else:
                probs = torch.softmax(masked / temp, dim=-1).cpu()
                tok = int(torch.multinomial(probs, 1, generator=generator))
            out.append(tok)
            if tok == plan.END or pos + 1 >= MAX_LEN:
                break
            logits, past = self(torch.tensor([[tok]], device=device), start=pos, past=past)
            pos += 1
        if out[-1] != plan.END:
            out.append(plan.END)
        return out
