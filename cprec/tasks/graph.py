"""Graph node classification (``dataset=cora|citeseer``): the Planetoid citation graphs as a
full-batch task, through PyTorch Geometric (the optional extra ``pip install -e ".[graph]"``).

One training step is one forward/backward over the whole graph, the loss on the training
nodes of the public Planetoid split (20 per class); so a step is one "sample" for the cost
ledger (MACs per sample = one forward over the graph), an epoch is one step and
``trainer.batch_size`` plays no part. Evaluation reports the test nodes (``test_loss``,
``test_acc``) and the validation nodes (``val_loss``, ``val_acc``).

PyTorch Geometric is imported only to read (or download) the data, never by ``cprec
--help``, non-graph runs or ``cprec schedule`` (the shape is known without it). The raw
files are read where they are (``torch_geometric.io.read_planetoid_data``): nothing is
written next to them unless they are downloaded.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cprec.config import DatasetConfig, TrainConfig
from cprec.errors import ConfigError, CprecError, DataError
from cprec.models.gnn import Graph
from cprec.tasks.base import AccuracyWindow, DatasetInfo, Task, TaskFamily, eval_mode
from cprec.tasks.vision import DEFAULT_DATA_ROOT

# dataset -> (PyG's folder name, nodes, features, classes), known without loading
PLANETOID = {"cora": ("Cora", 2708, 1433, 7), "citeseer": ("CiteSeer", 3327, 3703, 6)}
RAW_PARTS = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")


def require_pyg(name: str) -> None:
    """The one-line error when the optional extra is missing."""
    try:
        with warnings.catch_warnings():  # its import warns about torch.jit.script on new torch
            warnings.simplefilter("ignore")
            import torch_geometric  # noqa: F401
    except ImportError:
        raise CprecError(f'dataset={name} needs PyTorch Geometric: pip install -e ".[graph]" '
                         f"(or pip install torch_geometric)") from None


def planetoid_root(cfg: DatasetConfig) -> Path:
    """``dataset.root``, else ``~/.cache/cprec/data/planetoid``: holds ``<Name>/raw/ind.*``."""
    return Path(cfg.root).expanduser() if cfg.root else DEFAULT_DATA_ROOT / "planetoid"


def _download(root: Path, folder: str) -> None:
    """PyG's download (raw files and its processed cache) into a temporary folder; only when
    it succeeds are its files moved into ``<root>/<folder>/`` (those not there already), so
    a failed download (offline, blocked) leaves the data root exactly as it was."""
    from torch_geometric.datasets import Planetoid

    with tempfile.TemporaryDirectory(prefix="cprec-planetoid-") as tmp:
        try:
            Planetoid(tmp, folder)
        except Exception:  # offline or blocked: the caller's clear error
            return
        for sub in ("raw", "processed"):
            source = Path(tmp) / folder / sub
            if not source.is_dir():
                continue
            target = root / folder / sub
            target.mkdir(parents=True, exist_ok=True)
            for file in sorted(source.iterdir()):
                if not (target / file.name).exists():
                    shutil.move(str(file), str(target / file.name))


@dataclass
class GraphData:
    """A whole graph on one device: row-normalised features, labels, the split's node indices."""

    info: DatasetInfo
    x: torch.Tensor  # N x F float32, every row sums to 1 (or is all zeros)
    y: torch.Tensor  # N int64
    graph: Graph
    train: torch.Tensor  # node indices (int64) of the training, validation and test nodes
    val: torch.Tensor
    test: torch.Tensor


def load_planetoid(cfg: DatasetConfig, device: torch.device) -> GraphData:
    """Read Cora or CiteSeer's raw Planetoid files from ``dataset.root`` (downloaded first
    when missing and ``dataset.download``); a missing file is a one-line DataError."""
    require_pyg(cfg.name)
    folder, nodes, features, classes = PLANETOID[cfg.name]
    root = planetoid_root(cfg)
    raw = root / folder / "raw"
    files = [f"ind.{cfg.name}.{part}" for part in RAW_PARTS]
    missing = [f for f in files if not (raw / f).is_file()]
    if missing and cfg.download:
        _download(root, folder)
        missing = [f for f in files if not (raw / f).is_file()]
    if missing:
        why = "a download failed (offline?)" if cfg.download else "dataset.download=false"
        raise DataError(f"dataset.root={str(root)!r} is invalid for dataset {cfg.name}: "
                        f"{', '.join(missing)} not found in {raw} ({why}; give the folder "
                        f"holding {folder}/raw, the Planetoid raw files, as dataset.root=<folder>)")
    from torch_geometric.io import read_planetoid_data

    try:
        data = read_planetoid_data(str(raw), cfg.name)
    except Exception as e:  # a truncated or foreign file
        raise DataError(f"dataset {cfg.name}: cannot read the Planetoid files in {raw} "
                        f"({type(e).__name__}: {e})") from None
    x = data.x.float()
    x = x / x.sum(1, keepdim=True).clamp_min(1e-12)  # row-normalised (Kipf & Welling)
    train, val, test = (m.nonzero().view(-1) for m in (data.train_mask, data.val_mask, data.test_mask))
    if cfg.train_subset is not None:
        train = train[: cfg.train_subset]
    if cfg.test_subset is not None:
        test = test[: cfg.test_subset]
    info = DatasetInfo(cfg.name, features, 1, classes)
    graph = Graph(data.edge_index.to(device), nodes)
    move = lambda t: t.to(device)  # noqa: E731
    return GraphData(info, move(x), move(data.y.long()), graph, move(train), move(val), move(test))


@dataclass
class GraphBatch:
    """One full-batch step's input: every node's features, the graph, the training nodes."""

    x: torch.Tensor
    graph: Graph
    nodes: torch.Tensor
    y: torch.Tensor  # the labels of ``nodes``


class NodeWindow(AccuracyWindow):
    """Mean loss and accuracy of the training nodes over the steps since the last evaluation."""

    def add(self, loss: torch.Tensor, out: torch.Tensor, batch: GraphBatch) -> None:
        super().add(loss, out, (None, batch.y))


class NodeClassificationTask(Task):
    """Full-batch node classification: one step per epoch, cross-entropy on the training nodes."""

    batch_size = 1  # graphs per step (cprec prt reports it)

    def __init__(self, data: GraphData, device: torch.device) -> None:
        self.data, self.device, self.info = data, device, data.info
        self.n_train, self.steps_per_epoch = 1, 1
        self.batch = GraphBatch(data.x, data.graph, data.train, data.y[data.train])

    def next_batch(self) -> GraphBatch:
        return self.batch

    def forward(self, model: nn.Module, batch: GraphBatch) -> tuple[torch.Tensor, torch.Tensor]:
        out = model(batch.x, batch.graph)[batch.nodes]
        return F.cross_entropy(out, batch.y), out

    def batch_samples(self, batch: GraphBatch) -> int:
        return 1  # one forward over the whole graph: what measure_macs counted

    def new_window(self) -> NodeWindow:
        return NodeWindow(self.device)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batch_size: int) -> dict[str, float]:
        with eval_mode(model):
            out = model(self.data.x, self.data.graph)
        result = {}
        for part in ("test", "val"):
            nodes = getattr(self.data, part)
            y = self.data.y[nodes]
            result[f"{part}_loss"] = float(F.cross_entropy(out[nodes], y))
            result[f"{part}_acc"] = int((out[nodes].argmax(1) == y).sum()) / len(nodes)
        return result

    def sample_input(self) -> tuple[torch.Tensor, Graph]:
        return self.data.x, self.data.graph

    def state_dict(self) -> dict:
        return {}  # the same batch every step; dropout draws from the checkpointed torch RNG

    def load_state_dict(self, state: dict) -> None:
        pass


def check_graph_config(cfg: TrainConfig) -> None:
    """What a graph run cannot take, before the data loads: image augmentation or
    normalisation (the model's kind is checked for every family: build.build_model_parts)."""
    d = cfg.dataset
    if d.augment or d.mean is not None:
        key, value = ("dataset.augment", d.augment) if d.augment else ("dataset.mean", d.mean)
        raise ConfigError(key, value, f"dataset={d.name} has node features, not images; its "
                          f"features are row-normalised")


def graph_shape(cfg: DatasetConfig) -> tuple[DatasetInfo, int]:
    """(features as ``channels``, size 1, classes; one training "sample", the graph)."""
    _, _, features, classes = PLANETOID[cfg.name]
    return DatasetInfo(cfg.name, features, 1, classes), 1


def build_graph_task(cfg: TrainConfig, device: torch.device, batch_size: int) -> Task:
    check_graph_config(cfg)
    return NodeClassificationTask(load_planetoid(cfg.dataset, device), device)


def dummy_graph(info: DatasetInfo) -> tuple[torch.Tensor, Graph]:
    """Zero features on the dataset's node count and a graph without edges (MACs of the
    dense transforms depend on the node count only)."""
    nodes = PLANETOID[info.name][1]
    return torch.zeros(nodes, info.channels), Graph(torch.zeros(2, 0, dtype=torch.int64), nodes)


def family() -> TaskFamily:
    return TaskFamily(graph_shape, build_graph_task, dummy_graph, unit=None)  # full-graph steps
