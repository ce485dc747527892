"""A GPT-2-style decoder-only language model and its byte-level training data.

Pre-LN transformer blocks, learned positional embeddings, fused-kernel attention through
`scaled_dot_product_attention(is_causal=True)`, a 4x GELU MLP, and the output projection
tied to the token embedding. With layers=12, d_model=768, heads=12, seq=1024 and
vocab_size=50304 it has exactly GPT-2 small's 124,475,904 parameters, the shape of the
measured H200 table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tuner.trial.setup import TrainingSetup
from tuner.workloads import text_corpus

#: Spans of the fixed validation set are drawn with this seed, not the trial's, so
#: every trial of a study is scored on the same held-out text.
VALIDATION_SEED = 1234
VALIDATION_BATCHES = 8
#: Tokens scored per validation batch, whatever the config: a batch is one held-out span
#: of this many tokens cut into windows of the config's sequence length (a shorter last
#: window when the length does not divide it). The validation set is then the same
#: tokens, the same count, for every micro batch size and sequence length, so val_loss
#: compares configs (a set of `micro_batch_size` windows would not).
VALIDATION_SPAN_TOKENS = 1024


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, d_model = x.shape
        q, k, v = self.qkv(x).split(d_model, dim=2)
        shape = (batch, seq, self.heads, d_model // self.heads)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(y.transpose(1, 2).reshape(batch, seq, d_model))


class Block(nn.Module):
    """One pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, heads, dropout)
        self.ln_2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.fc_out = nn.Linear(4 * d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln_1(x)))
        return x + self.drop(self.fc_out(F.gelu(self.fc(self.ln_2(x)))))


class GPT(nn.Module):
    def __init__(
        self, *, layers: int, d_model: int, heads: int, vocab_size: int, max_seq: int, dropout: float
    ) -> None:
        super().__init__()
        self.max_seq = max_seq
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.position_embedding = nn.Embedding(max_seq, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, heads, dropout) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.activation_checkpointing = False
        self.apply(self._init_weights)
        # GPT-2's scaled init of the residual projections keeps the residual stream's
        # variance from growing with depth.
        for name, param in self.named_parameters():
            if name.endswith(("proj.weight", "fc_out.weight")):
                nn.init.normal_(param, mean=0.0, std=0.02 / (2 * layers) ** 0.5)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        self.activation_checkpointing = enabled

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits of shape (batch, seq, vocab) for int64 `tokens` of shape (batch, seq)."""
        seq = tokens.shape[1]
        positions = torch.arange(seq, device=tokens.device)
        x = self.drop(self.token_embedding(tokens) + self.position_embedding(positions))
        for block in self.blocks:
            if self.activation_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        # Tied output projection: the token embedding matrix doubles as the LM head.
        return F.linear(self.ln_f(x), self.token_embedding.weight)


def language_model_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor] | ValidationSpan) -> torch.Tensor:
    if isinstance(batch, ValidationSpan):
        return batch.loss(model)
    inputs, targets = batch
    logits = model(inputs)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


class ValidationSpan:
    """One validation batch: `VALIDATION_SPAN_TOKENS` held-out tokens in windows of the
    model's sequence length; its loss is the mean over every token of the span."""

    def __init__(self, window: torch.Tensor, seq: int) -> None:
        inputs, targets = window[:-1].long(), window[1:].long()
        span = inputs.numel()
        full = span // seq * seq
        self.pieces: list[tuple[torch.Tensor, torch.Tensor]] = []
        if full:
            self.pieces.append((inputs[:full].view(-1, seq), targets[:full].view(-1, seq)))
        if full < span:
            self.pieces.append((inputs[full:].view(1, -1), targets[full:].view(1, -1)))
        self.tokens = span

    def loss(self, model: nn.Module) -> torch.Tensor:
        total = torch.zeros((), device=self.pieces[0][0].device)
        for inputs, targets in self.pieces:
            logits = model(inputs)
            total = total + F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="sum"
            )
        return total / self.tokens


def fixed_validation_spans(held_out: torch.Tensor, seq: int) -> list[ValidationSpan]:
    """The fixed validation set: `VALIDATION_BATCHES` spans at seeded offsets of the
    held-out text, independent of the config (its sequence length only sets the windows)."""
    generator = torch.Generator().manual_seed(VALIDATION_SEED)
    span = VALIDATION_SPAN_TOKENS + 1
    starts = torch.randint(0, held_out.numel() - span, (VALIDATION_BATCHES,), generator=generator)
    return [ValidationSpan(held_out[int(start) : int(start) + span], seq) for start in starts]


def perplexity(model: nn.Module, batches: Any, val_loss: float | None) -> dict[str, float]:
    """The gpt task metric: validation perplexity, exp(mean per-token loss)."""
    if val_loss is None or not math.isfinite(val_loss):
        return {}
    return {"perplexity": math.exp(min(val_loss, 700.0))}


class ByteWindows:
    """Random windows of `seq + 1` bytes from one split of the corpus, on the device."""

    def __init__(self, data: torch.Tensor, seq: int) -> None:
        if data.numel() <= seq + 1:
            raise ValueError(
                f"max_sequence_length={seq} is longer than the corpus split ({data.numel()} bytes)"
            )
        self.data = data
        self.seq = seq
        self.offsets = torch.arange(seq + 1, device=data.device)

    def batch(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(
            0, self.data.numel() - self.seq - 1, (size, 1), generator=generator, device=generator.device
        ).to(self.data.device)
        windows = self.data[starts + self.offsets].long()
        return windows[:, :-1], windows[:, 1:]


def build_gpt(params: Mapping[str, Any], *, seq: int, micro_batch_size: int, device: str) -> TrainingSetup:
    layers, d_model = int(params["layers"]), int(params["d_model"])
    model = GPT(
        layers=layers,
        d_model=d_model,
        heads=int(params["heads"]),
        vocab_size=int(params["vocab_size"]),
        max_seq=seq,
        dropout=float(params["dropout"]),
    ).to(device)
    corpus = text_corpus.corpus_tensor(device)
    split = text_corpus.split_point(corpus.numel())
    train = ByteWindows(corpus[:split], seq)
    validation = fixed_validation_spans(corpus[split:], seq)
    n_params = sum(p.numel() for p in model.parameters())
    notes = []
    if int(params["vocab_size"]) > 256:
        notes.append(
            f"byte-level data: token ids < 256, the other {int(params['vocab_size']) - 256} vocab rows are unused"
        )
    return TrainingSetup(
        model=model,
        make_batch=train.batch,
        loss_fn=language_model_loss,
        items_per_sample=seq,
        blocks=tuple(model.blocks),
        validation_batches=validation,
        flops_per_item=6.0 * n_params + 12.0 * layers * d_model * seq,
        set_activation_checkpointing=model.set_activation_checkpointing,
        notes=notes,
        validation_metrics=perplexity,
    )
