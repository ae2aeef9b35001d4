"""Forward passes of upstream GemNet's efficient triplet layers, with two changes.

- The longest triplet list of an edge (``kmax``) is read once per forward, when the graph is
  built, instead of with a host read in every layer call (a stream stall per block on a GPU).
- The bilinear contraction over ``(emb_size_trip, emb_size_interm)`` is one matmul with the
  weight flattened, where upstream materialises ``(emb_size_trip, n_edges, units_out)`` and
  then sums it: 686 MB per block at GemNet-XL widths for 2,327 edges.

The modules are fairchem's own (``EfficientInteractionDownProjection``,
``EfficientInteractionBilinear``), so parameters are upstream's.
"""

from __future__ import annotations

import torch
from fairchem.core.models.gemnet.layers.efficient import (
    EfficientInteractionBilinear,
    EfficientInteractionDownProjection,
)
from torch import Tensor


def down_projection(
    layer: EfficientInteractionDownProjection,
    rbf: Tensor,
    sph: Tensor,
    id_ca: Tensor,
    id_ragged_idx: Tensor,
    *,
    kmax: int,
) -> tuple[Tensor, Tensor]:
    """Upstream's triplet basis pair.

    Args:
        rbf: ``(1, n_edges, num_radial)``; sph: ``(T, num_spherical)``.
        id_ca, id_ragged_idx: ``(T,)`` output edge of each triplet and its slot in that edge's
            list of triplets; ``kmax`` is the longest list.
    Returns:
        ``rbf_W1 (n_edges, emb_size_interm, num_spherical)`` and
        ``sph (n_edges, num_spherical, kmax)`` (zero-padded).
    """
    num_edges = rbf.shape[1]
    rbf_W1 = torch.matmul(rbf, layer.weight).permute(1, 2, 0)
    padded = sph.new_zeros(num_edges, kmax, layer.num_spherical)
    padded[id_ca, id_ragged_idx] = sph
    return rbf_W1, padded.transpose(1, 2)


def bilinear(
    layer: EfficientInteractionBilinear,
    basis: tuple[Tensor, Tensor],
    m: Tensor,
    id_reduce: Tensor,
    id_ragged_idx: Tensor,
    *,
    kmax: int,
) -> Tensor:
    """Triplet messages summed into their output edges.

    Args:
        basis: the pair from :func:`down_projection`.
        m: ``(T, emb_size_trip)`` input-edge features of each triplet.
        id_reduce, id_ragged_idx: ``(T,)`` output edge and slot of each triplet.
    Returns:
        ``(n_edges, units_out)``.
    """
    rbf_W1, sph = basis
    num_edges = rbf_W1.shape[0]
    padded = m.new_zeros(num_edges, kmax, layer.emb_size)
    padded[id_reduce, id_ragged_idx] = m
    sum_k = torch.matmul(sph, padded)  # (n_edges, num_spherical, emb_size_trip)
    rbf_W1_sum_k = torch.matmul(rbf_W1, sum_k)  # (n_edges, emb_size_interm, emb_size_trip)
    # weight (emb_size_trip, emb_size_interm, units_out): contract both leading axes in one
    # matmul, where upstream materialises (emb_size_trip, n_edges, units_out) and sums it.
    flat = rbf_W1_sum_k.transpose(1, 2).reshape(num_edges, -1)
    return flat @ layer.weight.reshape(flat.shape[1], -1)
