"""Language modelling as a Task: token windows, a carried hidden state, perplexity.

A training *sample* is one window of ``dataset.bptt`` tokens of one stream (what the cost
ledger multiplies MACs per sample by; MACs are measured from a forward of one (1, bptt)
window). The training split's W = (tokens - 1) // bptt windows are laid out as ``B``
contiguous streams of S = W // B windows each (B = ``trainer.batch_size``, at most W); a
step trains the next window of every stream, so an epoch is S steps
(``build.steps_per_epoch(W, B)``), and the rest of the tokens is left out.

Truncated BPTT: the task holds the model's state (an LSTM's h and c), detached after every
step and reset to zeros at every epoch's start; it is part of the task's ``state_dict``, so
a checkpoint carries it and a resumed run continues bit for bit. Evaluation runs on its own
zero state over ``EVAL_STREAMS`` streams (pytorch/examples' eval batch of 10), every token of
the split, and leaves the training state alone.

Metrics: ``test_ppl = exp(test_loss)``, test_loss the mean cross-entropy per token (nats),
the same for the valid split (``valid_loss``, ``valid_ppl``), and next-token accuracy
(``test_acc``; ``train_acc`` in the training window) so that everything reading accuracy
(the precision range test, plots) keeps working. The headline metric is ``ppl``, lower is
better (summary.json: ``final_ppl``, ``best_ppl``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cprec.config import DatasetConfig, TrainConfig
from cprec.errors import ConfigError, DataError
from cprec.tasks.base import AccuracyWindow, DatasetInfo, ShardableTask, TaskFamily, eval_mode, shard_bounds
from cprec.tasks.corpora import Corpus, load_corpus

EVAL_STREAMS = 10


def _corpus(cfg: DatasetConfig) -> Corpus:
    return load_corpus(cfg.name, cfg.root, cfg.download)


def _train_tokens(cfg: DatasetConfig, corpus: Corpus) -> torch.Tensor:
    tokens = corpus.train if cfg.train_subset is None else corpus.train[: cfg.train_subset]
    if len(tokens) <= cfg.bptt:
        raise DataError(f"dataset {cfg.name}: {len(tokens)} training tokens do not fill one window "
                        f"of dataset.bptt={cfg.bptt} tokens (+1 target)")
    return tokens


def lm_shape(cfg: DatasetConfig) -> tuple[DatasetInfo, int]:
    """(info: classes = vocabulary size, size = bptt; training windows)."""
    corpus = _corpus(cfg)
    windows = (len(_train_tokens(cfg, corpus)) - 1) // cfg.bptt
    return DatasetInfo(cfg.name, 1, cfg.bptt, len(corpus.vocab)), windows


class PerplexityWindow(AccuracyWindow):
    """Mean token loss, perplexity and next-token accuracy since the last evaluation
    (``seen`` counts tokens)."""

    def add(self, loss: torch.Tensor, out: torch.Tensor, batch: tuple) -> None:
        y = batch[1]
        self.loss_sum += loss * y.numel()
        self.correct += (out.argmax(-1) == y).sum()
        self.seen += y.numel()

    def record_of(self, loss_sum: float, correct: float, seen: float) -> dict[str, float]:
        record = super().record_of(loss_sum, correct, seen)
        return {**record, "train_ppl": _ppl(record["train_loss"])}


def _ppl(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf


class LanguageModelTask(ShardableTask):
    """Next-token prediction over token streams with a carried (truncated-BPTT) state. Data
    parallel: rank r of N trains its share of the B streams (carrying its own state) and
    scores its share of the evaluation streams."""

    metric = "ppl"
    higher_is_better = False

    def __init__(self, cfg: DatasetConfig, corpus: Corpus, batch_size: int, device: torch.device) -> None:
        self.device, self.bptt = device, cfg.bptt
        train = _train_tokens(cfg, corpus)
        windows = (len(train) - 1) // cfg.bptt
        self.info = DatasetInfo(cfg.name, 1, cfg.bptt, len(corpus.vocab))
        self.n_train = windows
        self.streams = min(batch_size, windows)
        self.steps_per_epoch = windows // self.streams
        n = self.steps_per_epoch * cfg.bptt  # tokens per stream
        used = train[: self.streams * n + 1].to(device)
        self.x = used[:-1].view(self.streams, n)
        self.y = used[1:].view(self.streams, n)
        cut = (lambda t: t) if cfg.test_subset is None else (lambda t: t[: cfg.test_subset])
        self.eval_splits = {"test": cut(corpus.test).to(device), "valid": cut(corpus.valid).to(device)}
        self.epoch, self.index = 0, 0
        self.state: torch.Tensor | None = None  # the model's state after the last window

    @property
    def batch_size(self) -> int:
        return self.streams

    def shard(self, rank: int, world: int) -> None:
        super().shard(rank, world)
        lo, hi = shard_bounds(self.streams, rank, world)
        self.x, self.y, self.state = self.x[lo:hi], self.y[lo:hi], None

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.index == self.steps_per_epoch:  # a new epoch starts from a fresh state
            self.epoch, self.index, self.state = self.epoch + 1, 0, None
        s = slice(self.index * self.bptt, (self.index + 1) * self.bptt)
        self.index += 1
        return self.x[:, s], self.y[:, s]

    def forward(self, model: nn.Module, batch: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        out, state = model(x, self.state)
        self.state = None if state is None else state.detach()  # truncated BPTT
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1)), out

    def batch_share(self) -> tuple[int, int]:
        return len(self.x), self.streams

    def new_window(self) -> PerplexityWindow:
        return PerplexityWindow(self.device)

    @torch.no_grad()
    def score(self, model: nn.Module, tokens: torch.Tensor) -> tuple[float, int, int]:
        """(summed token loss, correct next tokens, tokens) over ``tokens`` in eval mode,
        ``EVAL_STREAMS`` streams from a zero state, every window (the last one shorter)."""
        streams = max(min(EVAL_STREAMS, (len(tokens) - 1) // 2), 1)
        n = (len(tokens) - 1) // streams
        lo, hi = shard_bounds(streams, self.rank, self.world)  # this rank's streams
        x = tokens[: streams * n].view(streams, n)[lo:hi]
        y = tokens[1: streams * n + 1].view(streams, n)[lo:hi]
        if hi == lo:  # more ranks than evaluation streams: nothing to score here
            return 0.0, 0, 0
        with eval_mode(model):
            loss_sum = torch.zeros((), device=tokens.device, dtype=torch.float64)
            correct = torch.zeros((), device=tokens.device, dtype=torch.int64)
            state = None
            for i in range(0, n, self.bptt):
                out, state = model(x[:, i:i + self.bptt], state)
                target = y[:, i:i + self.bptt]
                loss_sum += F.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1),
                                            reduction="sum")
                correct += (out.argmax(-1) == target).sum()
        return float(loss_sum), int(correct), (hi - lo) * n

    def eval_sums(self, model: nn.Module, batch_size: int) -> list[float]:
        """(summed loss, correct, tokens) of every split with tokens to score, in turn."""
        return [v for split, tokens in self.eval_splits.items() if len(tokens) >= 2
                for v in self.score(model, tokens)]

    def metrics_of(self, sums: list[float]) -> dict[str, float]:
        result = {}
        splits = [split for split, tokens in self.eval_splits.items() if len(tokens) >= 2]
        for i, split in enumerate(splits):
            loss_sum, correct, count = sums[3 * i:3 * i + 3]
            loss = loss_sum / count
            result |= {f"{split}_loss": loss, f"{split}_ppl": _ppl(loss), f"{split}_acc": correct / count}
        return result

    def sample_input(self) -> tuple[torch.Tensor]:
        return (self.x[:1, : self.bptt],)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index,
                "state": None if self.state is None else self.state.cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = state["epoch"], state["index"]
        self.state = None if state["state"] is None else state["state"].to(self.device)


def _build(cfg: TrainConfig, device: torch.device, batch_size: int) -> LanguageModelTask:
    if not cfg.trainer.drop_last:
        raise ConfigError("trainer.drop_last", False, "language-model streams all have the same "
                          "length: an epoch has no partial batch to keep")
    return LanguageModelTask(cfg.dataset, _corpus(cfg.dataset), batch_size, device)


def family() -> TaskFamily:
    return TaskFamily(lm_shape, _build, lambda info: (torch.zeros(1, info.size, dtype=torch.long),),
                      unit="windows of dataset.bptt tokens (one per stream and step)")

