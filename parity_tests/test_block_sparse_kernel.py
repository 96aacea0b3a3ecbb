"""The block-sparse attention kernels against HF PyTorch's own kernel, on the same random-block plan.

HF draws its train-mode plan from numpy's global generator; here its plan function is replaced by ours
(``tandem.core.block_sparse.random_blocks``), so both kernels attend the same random blocks and the test
reaches every code path: random blocks other than block 0, padded rows (partial and whole blocks),
unpadded rows (torch skips their mask terms) and the dense attention maps. The torch kernel must be
bitwise HF's from block size 16 on (real checkpoints use 64); for tiny blocks MKL's small-matrix kernels
round HF's batched products and our per-pair ones differently by a few ulps. The flax kernel: within
float rounding.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
import torch
from transformers.models.big_bird.modeling_big_bird import BigBirdBlockSparseAttention, BigBirdConfig

from tandem.backends.flax.block_sparse import block_sparse_attention as flax_kernel
from tandem.backends.torch.block_sparse import block_sparse_attention as torch_kernel
from tandem.core.block_sparse import random_blocks

# batch, heads, blocks, block size, head dim, random blocks, padding of the rows after the first. Lengths
# avoid 1024, 3072 and 4096, where HF draws from its legacy paper plans instead of the replaced function.
CASES = [
    (2, 4, 16, 16, 32, 3, 21),
    (2, 2, 15, 64, 64, 3, 70),
    (2, 2, 12, 32, 16, 2, 40),
    (2, 3, 10, 4, 8, 2, 7),
    (3, 2, 9, 3, 16, 1, 12),
    (1, 4, 12, 2, 4, 3, 0),
]


def _hf_kernel(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, plan: np.ndarray, bs: int, r: int
) -> tuple[torch.Tensor, torch.Tensor]:
    b, h, s, d = q.shape
    config = BigBirdConfig(
        hidden_size=h * d, num_attention_heads=h, block_size=bs, num_random_blocks=r, max_position_embeddings=s
    )
    module = BigBirdBlockSparseAttention(config).train()  # train: HF asks its plan function for the blocks
    module._bigbird_block_rand_mask_with_head = lambda **_: list(plan)
    blocked = mask.view(b, s // bs, bs)
    window = torch.cat([blocked[:, 1:-3], blocked[:, 2:-2], blocked[:, 3:-1]], dim=2)
    band = torch.einsum("blq,blk->blqk", blocked[:, 2:-2], window).unsqueeze(1)
    context, probs = module.bigbird_block_sparse_attention(
        q, k, v, band, mask.view(b, 1, s, 1), mask.view(b, 1, 1, s), blocked, blocked,
        h, r, d, bs, bs, b, s, s, 0, None, None, True,
    )  # fmt: skip
    return context.reshape(b, s, h, d).transpose(1, 2), probs


@pytest.mark.parametrize(("b", "h", "nb", "bs", "d", "r", "pad"), CASES)
def test_kernels_match_hf_kernel(
    b: int, h: int, nb: int, bs: int, d: int, r: int, pad: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flax kernel runs twice: as on the CPU (a pair per step) and as on an accelerator (all pairs in
    one vmapped step), both computed here on the CPU."""
    s = nb * bs
    generator = torch.Generator().manual_seed(nb)
    # q, k, v as the model makes them: head-split views of (B, S, h*d) projections
    q, k, v = (torch.randn(b, s, h, d, generator=generator).transpose(1, 2) for _ in range(3))
    mask = torch.ones(b, s)
    if pad:
        mask[1:, s - pad :] = 0.0
    plan = random_blocks(nb, h, r, training=True, seed=5, layer=1)
    assert (plan != 0).any()
    ref_context, ref_probs = _hf_kernel(q, k, v, mask, plan, bs, r)
    scale = 1.0 / math.sqrt(d)
    with torch.no_grad():
        context, probs = torch_kernel(q, k, v, mask, plan, bs, scale, -10000.0, True)
    atol = 0.0 if bs >= 16 else 1e-6
    torch.testing.assert_close(context, ref_context, rtol=0, atol=atol)
    torch.testing.assert_close(probs, ref_probs, rtol=0, atol=atol)
    fq, fk, fv, fm = (jax.numpy.asarray(x.contiguous().numpy()) for x in (q, k, v, mask))
    for backend in ("cpu", "gpu"):
        monkeypatch.setattr(jax, "default_backend", lambda backend=backend: backend)
        f_context, f_probs = flax_kernel(fq, fk, fv, fm, plan, bs, scale, -10000.0, True)
        np.testing.assert_allclose(np.asarray(f_context), ref_context.numpy(), rtol=0, atol=2e-6, err_msg=backend)
        np.testing.assert_allclose(np.asarray(f_probs), ref_probs.numpy(), rtol=0, atol=2e-6, err_msg=backend)
