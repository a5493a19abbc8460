"""The random Hadamard transform of NVFP4 training's weight-gradient GEMM.

Transformer Engine's NVFP4 recipe multiplies both inputs of dW = dY^T X by the same 16x16
random orthogonal matrix M = D H / 4 along their shared reduction axis (tokens / batch)
before quantizing them: H is the Sylvester Hadamard matrix (entries +-1), D a diagonal of
random signs. Outliers are spread over 16 elements, so a block's scale fits its values
better, and because M M^T = I the product is unchanged in exact arithmetic: with B the
block-diagonal of M along the token axis, the GEMM sees dY^T B and X^T B, and
(dY^T B)(X^T B)^T = dY^T B B^T X = dY^T X.

``transform`` applies x -> x M to each run of 16 consecutive elements along ``axis``;
``inverse`` applies x -> x M^T, undoing it (exactly in exact arithmetic: M's entries are
+-1/4, so for dyadic inputs even the float64 round trip is exact). A trailing run shorter
than 16 (an axis of 100 tokens) is left as it is: the whole map stays orthogonal (block
diagonal with an identity block), so nothing needs padding or cropping. The signs come
from a seeded ``torch.Generator``: ``RandomHadamard(seed)`` rebuilds the same M, and its
``state_dict`` is the seed, so a resumed run transforms as the uninterrupted one.
"""

from __future__ import annotations

import torch

BLOCK = 16


def hadamard_matrix(n: int = BLOCK, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The n x n Sylvester Hadamard matrix (n a power of two), entries +-1."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"Hadamard size must be a power of two, got {n}")
    h = torch.ones(1, 1, dtype=dtype)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def random_signs(seed: int, n: int = BLOCK, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """n random +-1 values from a torch.Generator seeded with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 2, (n,), generator=gen) * 2 - 1).to(dtype)


class RandomHadamard:
    """M = diag(signs) H / sqrt(n), applied blockwise along an axis."""

    def __init__(self, seed: int = 0, n: int = BLOCK) -> None:
        self.seed, self.n = seed, n
        signs = random_signs(seed, n, torch.float64)
        self._m64 = signs[:, None] * hadamard_matrix(n, torch.float64) / n ** 0.5

    def matrix(self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
               ) -> torch.Tensor:
        """M (orthogonal: M M^T = I; entries +-1/sqrt(n), exact for n = 16)."""
        return self._m64.to(dtype=dtype, device=device)

    def transform(self, x: torch.Tensor, axis: int = -1) -> torch.Tensor:
        """x M on every full run of n elements along ``axis``; the tail is kept."""
        return self._apply(x, axis, self.matrix(x.dtype, x.device))

    def inverse(self, x: torch.Tensor, axis: int = -1) -> torch.Tensor:
        """x M^T blockwise: undoes ``transform``."""
        return self._apply(x, axis, self.matrix(x.dtype, x.device).T)

    def _apply(self, x: torch.Tensor, axis: int, m: torch.Tensor) -> torch.Tensor:
        moved = x.movedim(axis, -1)
        length = moved.shape[-1]
        full = length - length % self.n
        # one (runs, n) @ (n, n) product: a batched matmul of a non-contiguous view would
        # copy M once per batch element
        head = (moved[..., :full].reshape(-1, self.n) @ m).reshape(*moved.shape[:-1], full)
        out = torch.cat([head, moved[..., full:]], -1) if full < length else head
        return out.movedim(-1, axis)

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "n": self.n}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.__init__(int(state["seed"]), int(state["n"]))
