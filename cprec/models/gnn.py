"""Message-passing models for node classification: GCN (Kipf & Welling) and GraphSAGE.

Every dense feature transform is a plain ``nn.Linear`` (one per layer), so cprec's module
swap quantizes it and the cost ledger counts it: nodes x in x out MACs per layer and forward
(GraphSAGE: x 2 out, its neighbour and root transforms). The neighbour
aggregation is a full-precision sparse product with a fixed propagation matrix, outside the
ledger: it has no weights and costs nnz(P) x F additions per layer (Cora, GCN: nnz(Â) =
13,264, so 212,224 and 92,848 for the two layers, against 62.1M and 0.3M MACs of the dense
transforms; README "Graph node classification").

Pure torch: PyTorch Geometric only loads the data (cprec/tasks/graph.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cprec.config import ModelConfig
from cprec.tasks.base import DatasetInfo


class Graph:
    """A graph's edges (``edge_index``, 2 x E, both directions of every undirected edge) and
    its propagation matrices, each built once on the edges' device and kept."""

    def __init__(self, edge_index: torch.Tensor, num_nodes: int) -> None:
        self.edge_index, self.num_nodes = edge_index, num_nodes
        self._cache: dict[str, torch.Tensor] = {}

    def _sparse(self, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        n = self.num_nodes
        return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n, n),
                                       check_invariants=True).coalesce()

    def gcn_adjacency(self) -> torch.Tensor:
        """Â = D^-1/2 (A + I) D^-1/2, the symmetric normalised adjacency with self-loops (D:
        degrees of A + I); self-loops already in A are replaced, not doubled."""
        if "gcn" not in self._cache:
            row, col = self.edge_index
            keep = row != col
            loops = torch.arange(self.num_nodes, device=row.device)
            row, col = torch.cat([row[keep], loops]), torch.cat([col[keep], loops])
            deg = torch.zeros(self.num_nodes, device=row.device).index_add_(
                0, row, torch.ones_like(row, dtype=torch.float32))
            inv_sqrt = deg.pow(-0.5)
            self._cache["gcn"] = self._sparse(row, col, inv_sqrt[row] * inv_sqrt[col])
        return self._cache["gcn"]

    def mean_adjacency(self) -> torch.Tensor:
        """D^-1 A: row i averages node i's neighbours (a node without any gets zeros)."""
        if "mean" not in self._cache:
            row, col = self.edge_index
            deg = torch.zeros(self.num_nodes, device=row.device).index_add_(
                0, row, torch.ones_like(row, dtype=torch.float32))
            self._cache["mean"] = self._sparse(row, col, 1.0 / deg[row])
        return self._cache["mean"]

    def nnz(self, kind: str) -> int:
        """Non-zeros of a propagation matrix (``gcn`` or ``mean``): additions per feature."""
        return int((self.gcn_adjacency() if kind == "gcn" else self.mean_adjacency())._nnz())


def aggregate(matrix: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """matrix @ h in float32, outside autocast (``amp`` casts the dense transforms only): the
    aggregation stays full precision, as the ledger assumes."""
    with torch.autocast(h.device.type, enabled=False):
        return torch.sparse.mm(matrix, h.float())


class GCNLayer(nn.Module):
    """Â (X W) + b: the dense transform (``lin``, no bias) then the sparse aggregation; the
    bias comes after it, as in Kipf & Welling's layer and PyG's GCNConv."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d_in, d_out, bias=False)
        self.bias = nn.Parameter(torch.zeros(d_out))
        nn.init.xavier_uniform_(self.lin.weight)  # Glorot, as their code

    def forward(self, x: torch.Tensor, graph: Graph) -> torch.Tensor:
        return aggregate(graph.gcn_adjacency(), self.lin(x)) + self.bias


class SAGELayer(nn.Module):
    """GraphSAGE with mean aggregation (PyG's SAGEConv): mean_j(x_j) W_l + b + x_i W_r.

    W_l and W_r are one ``nn.Linear`` (``lin``, 2 x out rows: the neighbour and the root
    transform), so the layer is one compute layer to quantize and to keep in full precision
    as the model's last; the neighbour transform comes before the mean (the same linear map,
    an aggregation over out instead of in features). The bias is added after the mean, so a
    node without neighbours gets it too, as in SAGEConv.
    """

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d_in, 2 * d_out, bias=False)
        self.bias = nn.Parameter(torch.zeros(d_out))
        self.d_out = d_out

    def forward(self, x: torch.Tensor, graph: Graph) -> torch.Tensor:
        neighbour, root = self.lin(x).split(self.d_out, dim=1)
        return aggregate(graph.mean_adjacency(), neighbour) + self.bias + root


def sparse_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout of x's non-zero entries only (Kipf & Welling's sparse dropout of the input
    features): the same distribution as ``F.dropout`` (a zero stays zero either way) at one
    draw per non-zero; bag-of-words features are ~1% non-zero (Cora, one thread: 13 ms
    against 88 ms for F.dropout's N x F draws)."""
    if not training or p == 0:
        return x
    nz = x.nonzero(as_tuple=True)
    values = x[nz]
    keep = torch.empty_like(values).bernoulli_(1 - p)
    out = torch.zeros_like(x)
    out[nz] = values * keep / (1 - p)
    return out


class NodeClassifier(nn.Module):
    """Two message-passing layers: dropout -> layer1 -> ReLU -> dropout -> layer2 (logits);
    the input's dropout is ``sparse_dropout`` (the features are sparse).

    ``forward(x, graph)`` takes every node's features (N x F) and the graph, and returns
    every node's logits; the task picks the nodes its loss and metrics use. Dropout draws
    from torch's global generator (seeded per run, saved in checkpoints).
    """

    def __init__(self, layer: type[nn.Module], d_in: int, hidden: int, classes: int,
                 dropout: float) -> None:
        super().__init__()
        self.conv1, self.conv2 = layer(d_in, hidden), layer(hidden, classes)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, graph: Graph) -> torch.Tensor:
        x = sparse_dropout(x, self.dropout, self.training)
        x = F.relu(self.conv1(x, graph))
        x = F.dropout(x, self.dropout, self.training)
        return self.conv2(x, graph)


def gcn(cfg: ModelConfig, info: DatasetInfo) -> nn.Module:
    """Kipf & Welling's two-layer GCN: ``model.hidden`` units, ``model.dropout``."""
    return NodeClassifier(GCNLayer, info.channels, cfg.hidden, info.classes, cfg.dropout)


def sage(cfg: ModelConfig, info: DatasetInfo) -> nn.Module:
    """Two-layer GraphSAGE (mean aggregation): ``model.hidden`` units, ``model.dropout``."""
    return NodeClassifier(SAGELayer, info.channels, cfg.hidden, info.classes, cfg.dropout)


GRAPH_MODELS = {"gcn": gcn, "sage": sage}
