"""GemNet-XL: upstream GemNet-T, graph-parallel, with upstream's parameters and weights."""

from __future__ import annotations

import logging

import torch
from fairchem.core.common import distutils
from fairchem.core.common.registry import registry
from fairchem.core.common.utils import conditional_grad
from fairchem.core.models.gemnet.gemnet import GemNetT
from fairchem.core.models.gemnet.utils import inner_product_normalized
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ocp_graphpar.models.gemnet_xl.blocks import Bases, interaction
from ocp_graphpar.models.gemnet_xl.graph import LocalGraph, build_local_graph
from ocp_graphpar.models.gemnet_xl.scaling import (
    fit_scale_factors,
    load_scale_dict,
    make_scale_factors_graph_parallel,
)
from ocp_graphpar.models.gemnet_xl.widths import check_widths_on_load
from ocp_graphpar.models.gradient_scaling import scale_gradients_for_ddp
from ocp_graphpar.parallel import WorkWeights, counting, reduce_partial


@registry.register_model("gemnet_xl")
class GemNetXL(GemNetT):
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
        self.activation_checkpointing = activation_checkpointing
        self.partition_weights = WorkWeights(**(partition_weights or {}))
        self._scale_fit_pending = auto_fit_scale_factors
        make_scale_factors_graph_parallel(self)
        scale_gradients_for_ddp(self)
        check_widths_on_load(self)
        self.last_forward: dict = {}

    @conditional_grad(torch.enable_grad())
    def forward(self, data) -> dict[str, Tensor]:
        """Per-system energies ``(B, 1)`` and per-atom forces ``(N, 3)``, on every GP rank.

        After each call, ``last_forward`` holds the partition statistics (per-rank atoms, edges,
        triplets, halo sizes, cut edges, load) and the bytes and calls of each collective kind
        this rank issued in the forward pass.
        """
        if self._scale_fit_pending and self.training:
            self._scale_fit_pending = False
            self._fit_scale_factors(data)
        with counting() as comm:
            outputs, graph = self._forward(data)
        self.last_forward = {"partition": graph.plan.stats, "comm": comm.as_dict()}
        return outputs

    def _forward(self, data) -> tuple[dict[str, Tensor], LocalGraph]:
        if self.regress_forces and not self.direct_forces:
            data.pos.requires_grad_(True)
        graph = build_local_graph(self, data, self.partition_weights)
        bases = self._bases(graph)

        h = self.atom_emb(data.atomic_numbers.long()[graph.plan.atoms])  # (n_atoms, A)
        m = self.edge_emb(
            graph.plan.with_halo(h), bases.rbf, graph.idx_s, graph.idx_t
        )  # (n_edges, D)

        E_t, F_st = self.out_blocks[0](h, m, bases.rbf_out, graph.idx_t)
        for block, out_block in zip(self.int_blocks, self.out_blocks[1:]):
            if self.activation_checkpointing and torch.is_grad_enabled():
                h, m = checkpoint(interaction, block, h, m, bases, graph, use_reentrant=False)
            else:
                h, m = interaction(block, h, m, bases, graph)
            E, F = out_block(h, m, bases.rbf_out, graph.idx_t)
            F_st = F_st + F
            E_t = E_t + E

        outputs = {"energy": self._system_energies(E_t, graph, data)}
        if self.regress_forces:
            outputs["forces"] = self._forces(F_st, outputs["energy"], graph, data)
        return outputs, graph

    def _fit_scale_factors(self, data) -> None:
        def run_forward() -> None:
            with torch.set_grad_enabled(self.regress_forces and not self.direct_forces):
                self._forward(data.clone())

        fitted = fit_scale_factors(self, run_forward)
        if fitted and distutils.is_master():
            values = ", ".join(f"{name}={value:.3f}" for name, value in fitted.items())
            logging.info(
                f"fitted {len(fitted)} GemNet-XL scale factors on the first batch: {values}"
            )

    def _bases(self, graph: LocalGraph) -> Bases:
        cos_cab = inner_product_normalized(
            graph.direction[graph.id3_ca], graph.direction[graph.id3_ba]
        )
        rad_cbf3, cbf3 = self.cbf_basis3(graph.distance, cos_cab, graph.id3_ca)
        rbf = self.radial_basis(graph.distance)
        return Bases(
            rbf=rbf,
            rbf3=self.mlp_rbf3(rbf),
            cbf3=self.mlp_cbf3(rad_cbf3, cbf3, graph.id3_ca, graph.id3_ragged_idx),
            rbf_h=self.mlp_rbf_h(rbf),
            rbf_out=self.mlp_rbf_out(rbf),
        )

    def _system_energies(self, atom_energy: Tensor, graph: LocalGraph, data) -> Tensor:
        """``(B, 1)`` energies from owned atoms' contributions ``(n_atoms, 1)``."""
        partial = atom_energy.new_zeros(graph.num_systems, atom_energy.shape[1])
        energy = reduce_partial(partial.index_add(0, graph.atom_batch, atom_energy))
        if not self.extensive:
            natoms = torch.bincount(data.batch, minlength=graph.num_systems)
            energy = energy / natoms.unsqueeze(1).to(energy.dtype)
        return energy

    def _forces(self, F_st: Tensor, energy: Tensor, graph: LocalGraph, data) -> Tensor:
        """``(N, 3)`` forces on every atom of the batch, identical on every rank."""
        if not self.direct_forces:
            return -torch.autograd.grad(energy.sum(), data.pos, create_graph=True)[0]
        F_st_vec = F_st[:, :, None] * graph.direction[:, None, :]  # (n_edges, 1, 3)
        owned = F_st_vec.new_zeros(graph.plan.num_atoms, 1, 3).index_add(0, graph.idx_t, F_st_vec)
        return graph.plan.gather_atoms(owned.squeeze(1))
