"""GemNet-XL: upstream GemNet-T, graph-parallel, with upstream's parameters and weights."""

from __future__ import annotations

from fairchem.core.common.registry import registry
from fairchem.core.models.gemnet.gemnet import GemNetT
from fairchem.core.models.gemnet.utils import inner_product_normalized
from torch import Tensor

from ocp_graphpar.models.base import GraphParallelModel, ShardedOutput
from ocp_graphpar.models.gemnet_xl.bilinear import down_projection
from ocp_graphpar.models.gemnet_xl.blocks import Bases, interaction
from ocp_graphpar.models.gemnet_xl.graph import LocalGraph, build_local_graph
from ocp_graphpar.models.gemnet_xl.scale_file import load_scale_dict
from ocp_graphpar.models.gemnet_xl.widths import check_widths_on_load


@registry.register_model("gemnet_xl")
class GemNetXL(GraphParallelModel, GemNetT):
    """GemNet-T split over the ranks of fairchem's GP group ("owner computes").

    Takes upstream ``gemnet_t``'s arguments and has its parameter names and shapes, so
    upstream state dicts load with ``strict=True``. Each rank owns a spatially contiguous,
    work-balanced set of atoms and the edges that end on them, builds triplets and bases for
    those edges only, and exchanges halo rows twice per block. Every rank returns the full
    per-system energies and per-atom forces, so OCPTrainer needs no change.

    Extra args:
        activation_checkpointing: recompute each interaction block in the backward pass.
        partition_weights: work estimate per ``atom``, ``edge``, ``triplet`` for balancing.
        auto_fit_scale_factors: if training starts with unfitted scale factors (no
            ``scale_file``, no checkpoint), fit them on the first training batch, with
            statistics over all ranks, before its step. Fitted factors are saved with the
            checkpoint, which ``--mode run-relaxations`` requires.
        **kwargs: upstream ``GemNetT`` arguments; ``scale_file`` also accepts the legacy
            ``IntBlock_*_sum`` names.
    """

    display_name = "GemNet-XL"

    def __init__(
        self,
        *args,
        activation_checkpointing: bool = False,
        partition_weights: dict | None = None,
        auto_fit_scale_factors: bool = False,
        scale_file=None,
        **kwargs,
    ) -> None:
        super().__init__(*args, scale_file=load_scale_dict(scale_file), **kwargs)
        self.setup_graph_parallel(
            activation_checkpointing=activation_checkpointing,
            partition_weights=partition_weights,
            auto_fit_scale_factors=auto_fit_scale_factors,
        )
        check_widths_on_load(self)

    def sharded_forward(self, data) -> ShardedOutput:
        graph = build_local_graph(self, data)
        bases = self._bases(graph)

        h = self.atom_emb(graph.plan.owned_atom_rows(data.atomic_numbers.long()))  # (n_atoms, A)
        m = self.edge_emb(
            graph.plan.with_halo(h), bases.rbf, graph.idx_s, graph.idx_t
        )  # (n_edges, D)

        # Output blocks are checkpointed too: their per-edge force heads hold most of what is
        # alive at a checkpointed step's peak otherwise.
        E_t, F_st = self.checkpointed(self.out_blocks[0], h, m, bases.rbf_out, graph.idx_t)
        for block, out_block in zip(self.int_blocks, self.out_blocks[1:]):
            h, m = self.checkpointed(interaction, block, h, m, bases, graph)
            E, F = self.checkpointed(out_block, h, m, bases.rbf_out, graph.idx_t)
            F_st = F_st + F
            E_t = E_t + E
        forces = self._direct_forces(F_st, graph) if self.direct_forces else None
        return ShardedOutput(plan=graph.plan, atom_energy=E_t, atom_forces=forces)

    def system_energy(self, energy: Tensor, data) -> Tensor:
        """``(B, 1)``; divided by the atom count for an intensive target, as upstream."""
        if self.extensive:
            return energy
        return energy / data.natoms.unsqueeze(1).to(energy.dtype)

    def _bases(self, graph: LocalGraph) -> Bases:
        cos_cab = inner_product_normalized(
            graph.direction[graph.id3_ca], graph.direction[graph.id3_ba]
        )
        rad_cbf3, cbf3 = self.cbf_basis3(graph.distance, cos_cab, graph.id3_ca)
        rbf = self.radial_basis(graph.distance)
        return Bases(
            rbf=rbf,
            rbf3=self.mlp_rbf3(rbf),
            cbf3=down_projection(
                self.mlp_cbf3, rad_cbf3, cbf3, graph.id3_ca, graph.id3_ragged_idx, kmax=graph.kmax
            ),
            rbf_h=self.mlp_rbf_h(rbf),
            rbf_out=self.mlp_rbf_out(rbf),
        )

    @staticmethod
    def _direct_forces(F_st: Tensor, graph: LocalGraph) -> Tensor:
        """``(n_atoms, 3)`` forces on owned atoms from per-edge force magnitudes ``(n_edges, 1)``."""
        F_st_vec = F_st[:, :, None] * graph.direction[:, None, :]  # (n_edges, 1, 3)
        owned = F_st_vec.new_zeros(graph.plan.num_atoms, 1, 3).index_add(0, graph.idx_t, F_st_vec)
        return owned.squeeze(1)
