"""Fine-tune the sentence encoder on earmark's own labels before it is exported and quantised.

Why: with the encoder frozen, the heads can only draw lines through an embedding space made for
general sentence similarity, where "the nurse said my numbers were high" sits near "my numbers
at work were high". Letting the encoder's weights move a little (one pass, small learning rate)
pulls utterances of the same label together. The heads that ship are trained afterwards, as
before, on the int8 encoder's own embeddings; the heads used here are thrown away.

Build-time only (torch, CPU): the device runs the exported graph.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from encoder import MiniLMEmbedder
from tqdm import tqdm

ENCODER_LR = 3e-5
HEAD_LR = 1e-3
BATCH = 32
# logits from the unit-length embedding need a scale: cosine-style classifier heads
SCALE = 20.0


class _Heads(torch.nn.Module):
    def __init__(self, n_interest: int, n_sensitive: int) -> None:
        super().__init__()
        self.interest = torch.nn.Linear(384, n_interest)
        self.sensitive = torch.nn.Linear(384, n_sensitive)

    def forward(self, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.interest(e * SCALE), self.sensitive(e * SCALE)


def finetune(
    model: MiniLMEmbedder,
    token_ids: list[list[int]],
    y_interest: np.ndarray,
    y_sensitive: np.ndarray,
    seed: int,
) -> MiniLMEmbedder:
    """One pass over ``token_ids`` (one list per utterance) with an interest softmax loss
    (class-balanced as the shipped head is) plus a sensitive sigmoid loss; returns ``model``
    in eval mode. Batches hold utterances of similar length, so padding stays small."""
    torch.manual_seed(seed)
    n_int = int(y_interest.max()) + 1
    heads = _Heads(n_int, y_sensitive.shape[1])
    opt = torch.optim.AdamW(
        [
            {"params": model.parameters(), "lr": ENCODER_LR},
            {"params": heads.parameters(), "lr": HEAD_LR},
        ],
        weight_decay=1e-2,
    )
    counts = np.bincount(y_interest, minlength=n_int).astype(np.float32)
    ce = torch.nn.CrossEntropyLoss(
        weight=torch.from_numpy((counts.max() / np.maximum(counts, 1)) ** 0.5)
    )
    bce = torch.nn.BCEWithLogitsLoss()
    batches = _length_batches(token_ids, random.Random(seed))
    warmup = max(1, len(batches) // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda step: (
            min(1.0, (step + 1) / warmup)
            * 0.5
            * (1 + math.cos(math.pi * min(step, len(batches)) / len(batches)))
        ),
    )
    model.train()
    heads.train()
    bar = tqdm(batches, desc="fine-tune encoder", unit="batch")
    for n, idx in enumerate(bar):
        width = max(len(token_ids[i]) for i in idx)
        ids = torch.zeros((len(idx), width), dtype=torch.int64)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(idx):
            ids[row, : len(token_ids[i])] = torch.tensor(token_ids[i])
            mask[row, : len(token_ids[i])] = 1
        logits_int, logits_sens = heads(model(ids, mask))
        loss = ce(logits_int, torch.from_numpy(y_interest[idx])) + bce(
            logits_sens, torch.from_numpy(y_sensitive[idx])
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if n % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


def _length_batches(token_ids: list[list[int]], rng: random.Random) -> list[list[int]]:
    """Shuffled batches of utterances of similar length (sorted in shuffled chunks)."""
    order = list(range(len(token_ids)))
    rng.shuffle(order)
    chunk = BATCH * 50
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: len(token_ids[i]))
        batches += [part[k : k + BATCH] for k in range(0, len(part), BATCH)]
    rng.shuffle(batches)
    return batches
