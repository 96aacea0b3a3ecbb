"""Block-sparse attention planning (framework-free): which key blocks each query block attends.

The attention pattern is HF PyTorch BigBird's: the first and last query blocks attend everything; query
block 1 and block nb-2 attend the first three / last three blocks, the opposite global block and their
random blocks; every middle block q attends blocks q-1, q, q+1, the two global blocks and its random blocks.

Random blocks:

- **eval**: HF PyTorch uses all-zero random indices (each "random" block is key block 0, r times). The
  logits depend on it, so tandem does the same.
- **train**: HF reseeds numpy's global generator with the layer index and its plan cannot be reproduced by
  another framework. tandem draws from ``numpy.random.default_rng([seed, layer, head])``: for each query
  block 1..nb-2, ``r`` distinct key blocks chosen uniformly among the legal ones (not in the sliding window
  of the row, not a global block, and for rows 1 / nb-2 not the far sliding block that HF also excludes).
  The plan is computed on the host and handed to either backend, so the same seed gives the same blocks in
  torch and flax.
"""

from __future__ import annotations

import numpy as np


def min_sparse_length(block_size: int, num_random_blocks: int) -> int:
    """HF PyTorch runs full attention when the unpadded length is <= this (2 global + 3 sliding + 2r)."""
    return (5 + 2 * num_random_blocks) * block_size


def random_blocks(
    num_blocks: int, num_heads: int, num_random_blocks: int, training: bool, seed: int, layer: int
) -> np.ndarray:
    """The random key block of each (head, query block 1..nb-2, slot): an int array (h, nb-2, r)."""
    plan = np.zeros((num_heads, num_blocks - 2, num_random_blocks), dtype=np.int64)
    if not training:
        return plan
    for head in range(num_heads):
        rng = np.random.default_rng([seed, layer, head])
        for row in range(1, num_blocks - 1):
            illegal = {row - 1, row, row + 1, 0, num_blocks - 1}
            if row == 1:
                illegal.add(num_blocks - 2)
            if row == num_blocks - 2:
                illegal.add(1)
            legal = np.array([b for b in range(num_blocks) if b not in illegal], dtype=np.int64)
            if len(legal) < num_random_blocks:
                raise ValueError(
                    f"block-sparse attention with {num_blocks} blocks has only {len(legal)} legal random blocks "
                    f"for query block {row}, fewer than num_random_blocks={num_random_blocks}"
                )
            plan[head, row - 1] = rng.choice(legal, size=num_random_blocks, replace=False)
    return plan
