"""A small causal Transformer language model (pre-LayerNorm GPT-style blocks).

Token embedding of ``model.hidden`` units plus a learned position embedding (up to the
training window, ``dataset.bptt`` tokens), ``model.layers`` blocks of causal self-attention
with ``model.heads`` heads and a 4x MLP, a final LayerNorm and a decoder tied to the token
embedding (``model.tied``). No state is carried between windows: ``forward(x, state=None)
-> (logits, None)``.

Cost ledger: the Linear layers (per block ``qkv`` d->3d, ``proj`` d->d, ``fc1`` d->4d,
``fc2`` 4d->d; the decoder d->V) are quantized and counted like every other Linear layer:
12 d^2 T MACs per block and d V T for the decoder per sample of T tokens. The attention's
score (Q K^T) and value (A V) products are not Linear layers: they are computed in full
precision and are NOT in the ledger (per block they would add 2 T^2 d MACs per sample,
T / (6d) of the block's Linear MACs: 4.6% at T=35, d=128; half of that under the causal mask).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cprec.config import ModelConfig
from cprec.errors import ConfigError
from cprec.tasks.base import DatasetInfo


class Block(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.fc2(F.gelu(self.fc1(self.ln2(x)))))


class TransformerLanguageModel(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, heads: int, dropout: float,
                 window: int, tied: bool) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, d)
        self.positions = nn.Embedding(window, d)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d, heads, dropout) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.decoder = nn.Linear(d, vocab)  # registered last: the model's last compute layer
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
        if tied:
            self.decoder.weight = self.tokens.weight

    def forward(self, x: torch.Tensor, state: None = None) -> tuple[torch.Tensor, None]:
        pos = torch.arange(x.shape[1], device=x.device)
        h = self.drop(self.tokens(x) + self.positions(pos))
        for block in self.blocks:
            h = block(h)
        return self.decoder(self.ln(h)), None


def transformer_lm(cfg: ModelConfig, info: DatasetInfo) -> nn.Module:
    if cfg.hidden % cfg.heads:
        raise ConfigError("model.heads", cfg.heads, f"must divide model.hidden={cfg.hidden}")
    return TransformerLanguageModel(info.classes, cfg.hidden, cfg.layers, cfg.heads, cfg.dropout,
                                    info.size, cfg.tied)
