"""What every graph-parallel model shares: the forward pass's frame around the model's own work.

A model mixes :class:`GraphParallelModel` in before the upstream fairchem class it extends
(``class GemNetXL(GraphParallelModel, GemNetT)``), calls :meth:`setup_graph_parallel` at the end
of its constructor, and implements :meth:`sharded_forward`: from a batch, build the rank's graph
(:meth:`replicated` positions, one :meth:`partition`), run the blocks on owned rows
(:meth:`checkpointed` where activation checkpointing applies) and return what the owned atoms
contribute. The base turns that into upstream's outputs on every rank:

- energies ``(B, *)``: the owned atoms' contributions summed per system over the GP group;
- forces ``(N, 3)``: ``-dE/dpos`` through the replicated positions (conservative), or the owned
  atoms' direct forces gathered into global atom order.

It also scales gradients so DDP's average over dp x gp ranks is the single-process gradient,
swaps fairchem's scale factors for ones fitted over all ranks, and can fit them on the first
training batch. See ``docs/porting.md`` for how to port a model.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from fairchem.core.common import distutils
from torch import Tensor

from ocp_graphpar.models.checkpointing import checkpoint_block
from ocp_graphpar.models.gradient_scaling import scale_gradient_for_ddp
from ocp_graphpar.models.scale_factors import fit_scale_factors, make_scale_factors_graph_parallel
from ocp_graphpar.parallel import PartitionPlan, WorkWeights, build_partition, copy_replicated

Output = TypeVar("Output")


@dataclass
class ShardedOutput:
    """What one rank's owned atoms contribute to the outputs of the batch.

    Attributes:
        plan: the batch's partition plan.
        atom_energy: ``(n_atoms, *)`` energy contributions of the owned atoms.
        atom_forces: ``(n_atoms, 3)`` direct forces on the owned atoms, or ``None`` when the
            model has no force head (forces are then ``-dE/dpos``).
    """

    plan: PartitionPlan
    atom_energy: Tensor
    atom_forces: Tensor | None = None


class GraphParallelModel:
    """Mixin for a fairchem model whose graph is split over the ranks of the GP group.

    Attributes set by :meth:`setup_graph_parallel`: ``activation_checkpointing`` (recompute
    each block in the backward pass) and ``partition_weights`` (work per atom, edge and
    triplet for balancing the ranks).
    """

    #: The model's name in log messages.
    display_name: str = "graph-parallel model"
    activation_checkpointing: bool = False
    partition_weights: WorkWeights = WorkWeights()
    _scale_fit_pending: bool = False

    def setup_graph_parallel(
        self,
        *,
        activation_checkpointing: bool = False,
        partition_weights: dict | None = None,
        auto_fit_scale_factors: bool = False,
    ) -> None:
        """Call once the upstream constructor has built the modules.

        Args:
            activation_checkpointing: recompute each block in the backward pass.
            partition_weights: ``{"atom", "edge", "triplet"}`` work estimates for balancing.
            auto_fit_scale_factors: if training starts with unfitted fairchem scale factors, fit
                them on the first training batch (statistics over all ranks) before its step.
        """
        self.activation_checkpointing = activation_checkpointing
        self.partition_weights = WorkWeights(**(partition_weights or {}))
        self._scale_fit_pending = auto_fit_scale_factors
        make_scale_factors_graph_parallel(self)

    # -- what a model implements ----------------------------------------------------------

    def sharded_forward(self, data) -> ShardedOutput:
        """This rank's share of the forward pass on batch ``data``."""
        raise NotImplementedError

    @property
    def conservative_forces(self) -> bool:
        """Whether forces are ``-dE/dpos`` (else the model's direct force head)."""
        return bool(self.regress_forces) and not getattr(self, "direct_forces", False)

    def system_energy(self, energy: Tensor, data) -> Tensor:
        """Upstream's energy output from per-system sums ``(B, *)`` (identity by default)."""
        return energy

    # -- the frame ------------------------------------------------------------------------

    def forward(self, data) -> dict[str, Tensor]:
        """Per-system energies and per-atom forces ``(N, 3)`` of the batch, on every GP rank.

        Forces ``-dE/dpos`` keep their graph (for a loss on them) only where the caller records
        gradients: under ``torch.no_grad()`` (prediction, ASE calculators) the backward pass
        frees each block's saved tensors as it goes, so inference holds no second graph."""
        keep_force_graph = torch.is_grad_enabled()
        with torch.enable_grad() if self.conservative_forces else contextlib.nullcontext():
            return self._outputs(data, keep_force_graph=keep_force_graph)

    def _outputs(self, data, *, keep_force_graph: bool) -> dict[str, Tensor]:
        if self._scale_fit_pending and self.training:
            self._scale_fit_pending = False
            self._fit_scale_factors(data)
        if self.conservative_forces:
            data.pos.requires_grad_(True)
        sharded = self.sharded_forward(data)
        energy = self.system_energy(sharded.plan.sum_over_systems(sharded.atom_energy), data)
        outputs = {"energy": energy}
        if self.regress_forces:
            if self.conservative_forces:
                # Checkpointed blocks skip their weight VJPs here: only ``pos`` is asked for.
                (grad,) = torch.autograd.grad(energy.sum(), data.pos, create_graph=keep_force_graph)
                outputs["forces"] = -grad
            else:
                outputs["forces"] = sharded.plan.gather_atoms(sharded.atom_forces)
        return {key: scale_gradient_for_ddp(value) for key, value in outputs.items()}

    @staticmethod
    def replicated(data):
        """A shallow copy of ``data`` whose positions are marked replicated: every rank builds
        its share of the geometry from them, so their gradient is summed over the GP group."""
        view = copy.copy(data)
        view.pos = copy_replicated(data.pos)
        return view

    def partition(
        self,
        data,
        edge_index: Tensor,
        *,
        reverse_edge: Tensor | None = None,
        triplets_per_edge: Tensor | int | None = None,
    ) -> PartitionPlan:
        """The plan of batch ``data`` with edges ``edge_index (2, E)`` (``[source, target]``):
        each rank owns a balanced, spatially contiguous set of atoms and the edges into them.
        ``reverse_edge (E,)`` adds the reverse-edge halo; ``triplets_per_edge (E,)`` (or one count
        for all edges) weighs the balance (default: GemNet's triplets, the other edges into the
        target). A batch may carry ``gp_atom_owner (N,)``, atom owners kept from an earlier
        step (an ASE calculator reusing its neighbour list): only the edges' part is rebuilt."""
        natoms = getattr(data, "natoms", None)
        return build_partition(
            data.batch,
            data.pos,
            getattr(data, "cell", None),
            edge_index,
            num_systems=None if natoms is None else int(natoms.numel()),
            reverse_edge=reverse_edge,
            triplets_per_edge=triplets_per_edge,
            weights=self.partition_weights,
            atom_owner=getattr(data, "gp_atom_owner", None),
        )

    def checkpointed(self, block: Callable[..., Output], *args) -> Output:
        """``block(*args)``, recomputed in the backward pass when activation checkpointing is on
        (and autograd records); also when forces are ``-dE/dpos`` (see :mod:`.checkpointing`).
        Modules the block uses must be ``block`` or among ``args``, so their parameters get
        gradients."""
        if self.activation_checkpointing and torch.is_grad_enabled():
            return checkpoint_block(block, *args)
        return block(*args)

    def _fit_scale_factors(self, data) -> None:
        def run_forward() -> None:
            with torch.set_grad_enabled(self.conservative_forces):
                batch = data.clone()
                if self.conservative_forces:
                    batch.pos.requires_grad_(True)
                self.sharded_forward(batch)

        fitted = fit_scale_factors(self, run_forward)
        if fitted and distutils.is_master():
            values = ", ".join(f"{name}={value:.3f}" for name, value in fitted.items())
            logging.info(
                f"fitted {len(fitted)} {self.display_name} scale factors on the first batch: "
                f"{values}"
            )
