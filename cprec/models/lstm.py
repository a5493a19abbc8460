"""Word/character-level LSTM language model built from Linear layers (quantizable, counted).

The classic PTB recipe (Zaremba et al.; pytorch/examples word_language_model): embedding
of ``model.hidden`` units, ``model.layers`` LSTM layers of ``model.hidden`` units, dropout
``model.dropout`` on the embedding, between layers and before the decoder, and the decoder
weight tied to the embedding (``model.tied``).

Each LSTM layer is two Linear layers: ``ih`` (input -> 4 gates, with the bias), applied to
the whole window at once, and ``hh`` (hidden -> 4 gates), applied once per time step. Both
are ordinary Linear layers, so quantization swaps them for QLinear (weights, activations
and errors quantized; the recurrent input ``h`` is quantized at every step) and the cost
ledger counts every gate: per sample (one window of T tokens) a layer with input size I
costs ``T * 4H * (I + H)`` MACs, the decoder ``T * H * V``. The gates' element-wise
products and non-linearities are not MACs of a compute layer and are not counted (as
BatchNorm and activations are not elsewhere).

Tied weights and quantization: the decoder's weight IS the embedding's. The decoder is the
model's last compute layer, so it stays full precision unless ``quant.quantize_last``; when
quantized, the shared weight is quantized inside the decoder's forward only, and the
embedding lookup reads the stored full-precision weight (an embedding is a lookup, not a
compute layer).

``forward(x, state=None) -> (logits, state)``: ``x`` is (batch, T) token ids, ``state`` a
tensor (2, layers, batch, hidden) of h and c (None: zeros); logits are (batch, T, vocab).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cprec.config import ModelConfig
from cprec.tasks.base import DatasetInfo


class LSTMLayer(nn.Module):
    def __init__(self, inputs: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.ih = nn.Linear(inputs, 4 * hidden)
        self.hh = nn.Linear(hidden, 4 * hidden, bias=False)
        bound = 1 / math.sqrt(hidden)  # nn.LSTM's initialization
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        gates_x = self.ih(x)  # (B, T, 4H): every time step's input part at once
        outs = []
        for t in range(x.shape[1]):
            i, f, g, o = (gates_x[:, t] + self.hh(h)).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h)
        return torch.stack(outs, dim=1), h, c


class LSTMLanguageModel(nn.Module):
    def __init__(self, vocab: int, hidden: int, layers: int, dropout: float, tied: bool) -> None:
        super().__init__()
        self.hidden, self.layers = hidden, layers
        self.encoder = nn.Embedding(vocab, hidden)
        self.drop = nn.Dropout(dropout)
        self.rnns = nn.ModuleList(LSTMLayer(hidden, hidden) for _ in range(layers))
        self.decoder = nn.Linear(hidden, vocab)  # registered last: the model's last compute layer
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if tied:
            self.decoder.weight = self.encoder.weight
        else:
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def initial_state(self, batch: int, device: torch.device) -> torch.Tensor:
        return torch.zeros(2, self.layers, batch, self.hidden, device=device)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if state is None:
            state = self.initial_state(x.shape[0], x.device)
        out = self.drop(self.encoder(x))
        hs, cs = [], []
        for layer, rnn in enumerate(self.rnns):
            out, h, c = rnn(out, state[0, layer], state[1, layer])
            out = self.drop(out)
            hs.append(h)
            cs.append(c)
        return self.decoder(out), torch.stack([torch.stack(hs), torch.stack(cs)])


def lstm(cfg: ModelConfig, info: DatasetInfo) -> nn.Module:
    return LSTMLanguageModel(info.classes, cfg.hidden, cfg.layers, cfg.dropout, cfg.tied)


def lstm_macs(vocab: int, hidden: int, layers: int, window: int) -> int:
    """Closed form of the MACs per sample (one window of ``window`` tokens)."""
    return window * (layers * 4 * hidden * (hidden + hidden) + hidden * vocab)
