"""The gpt workload's inference entry point: next-token scoring of variable-length prompts.

A request is a prompt of byte tokens whose length follows a long-tailed (lognormal)
distribution; the answer is the next-token logits after its last token. The scorer runs
the GPT's own blocks and computes the LM head on each prompt's last position only (what a
scoring service returns), in one of three layouts:

- longest: prompts right-padded to the batch's longest (causal attention never looks
  right, so padding does not change a prompt's logits);
- buckets: the same, but the batcher only batches prompts of one length bucket;
- packed: no padding at all: prompts concatenated into one row, positions restarting per
  prompt, a block-diagonal causal mask keeping them apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tuner.inference.loadgen import lognormal_lengths
from tuner.inference.serving import ServingSetup, ServingShape
from tuner.workloads.gpt_model import GPT

MODEL_SEED = 7
HELDOUT_SEED = 99
HELDOUT_REQUESTS = 64
LENGTH_MEDIAN, LENGTH_SIGMA, LENGTH_LOW = 64, 0.6, 8
BUCKETS = (32, 64, 128, 256)


class GPTScorer(nn.Module):
    def __init__(self, gpt: GPT) -> None:
        super().__init__()
        self.gpt = gpt

    def _attend(self, block: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        attn = block.attn
        batch, seq, d_model = x.shape
        q, k, v = attn.qkv(block.ln_1(x)).split(d_model, dim=2)
        shape = (batch, seq, attn.heads, d_model // attn.heads)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return attn.proj(y.transpose(1, 2).reshape(batch, seq, d_model))

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        last: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-token logits (n, vocab) at the flat indices `last` of (batch, seq) `tokens`."""
        gpt = self.gpt
        x = gpt.token_embedding(tokens) + gpt.position_embedding(positions)
        for block in gpt.blocks:
            x = x + self._attend(block, x, mask)
            x = x + block.fc_out(F.gelu(block.fc(block.ln_2(x))))
        hidden = gpt.ln_f(x.reshape(-1, x.shape[-1])[last])
        return F.linear(hidden, gpt.token_embedding.weight)


def collate(prompts: Sequence[torch.Tensor], padding: str) -> tuple[torch.Tensor, ...]:
    lengths = [len(p) for p in prompts]
    if padding == "packed":
        tokens = torch.cat(list(prompts)).unsqueeze(0)
        positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
        ends = torch.tensor(lengths).cumsum(0)
        segment = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
        index = torch.arange(int(ends[-1]))
        mask = (segment[:, None] == segment[None, :]) & (index[None, :] <= index[:, None])
        return tokens, positions, ends - 1, mask.unsqueeze(0).unsqueeze(0)
    longest = max(lengths)
    tokens = torch.zeros(len(prompts), longest, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        tokens[row, : len(prompt)] = prompt
    positions = torch.arange(longest)
    last = torch.arange(len(prompts)) * longest + torch.tensor(lengths) - 1
    return tokens, positions, last


def build_gpt_serving(params: Mapping[str, Any], *, max_length: int) -> ServingSetup:
    torch.manual_seed(MODEL_SEED)
    gpt = GPT(
        layers=params["layers"],
        d_model=params["d_model"],
        heads=params["heads"],
        vocab_size=params["vocab_size"],
        max_seq=max_length,
        dropout=0.0,
    )
    model = GPTScorer(gpt).eval()
    vocab = min(params["vocab_size"], 256)

    def make_requests(count: int, seed: int) -> list[torch.Tensor]:
        lengths = lognormal_lengths(
            count, median=LENGTH_MEDIAN, sigma=LENGTH_SIGMA, low=LENGTH_LOW, high=max_length, seed=seed
        )
        generator = torch.Generator().manual_seed(seed)
        return [torch.randint(0, vocab, (n,), generator=generator) for n in lengths]

    def forward(module: nn.Module, prompts: Sequence[torch.Tensor], padding: str) -> torch.Tensor:
        return module(*collate(prompts, padding))

    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    total = sum(p.numel() for p in model.parameters())
    d, layers = params["d_model"], params["layers"]
    lengths = lognormal_lengths(
        2000, median=LENGTH_MEDIAN, sigma=LENGTH_SIGMA, low=LENGTH_LOW, high=max_length, seed=1
    )
    shape = ServingShape(
        linear_params=linear,
        other_params=total - linear,
        # live per token: the residual, qkv (3d), attention out, MLP hidden (4d) and a few
        # temporaries; layers run one after another, so one layer's worth is live at a time.
        activation_bytes_per_item=4.0 * d * 12,
        mean_length=sum(lengths) / len(lengths),
        max_length=max_length,
    )
    del layers
    return ServingSetup(
        model=model,
        make_requests=make_requests,
        forward=forward,
        heldout=lambda: (make_requests(HELDOUT_REQUESTS, HELDOUT_SEED), None),
        accuracy_kind="lm_logits",
        shape=shape,
        request_length=len,
        paddings=("longest", "buckets", "packed"),
        bucket_edges=(*tuple(b for b in BUCKETS if b < max_length), max_length),
    )
