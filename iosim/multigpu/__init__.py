"""Attention across GPUs (issue 25): ring attention (contiguous, striped, zigzag), DeepSpeed-Ulysses all-to-all and
FastAttention's tiling-AllReduce. Per-GPU kernels are ordinary iosim schedules; transfers between GPUs are the level
below HBM (``interconnect``: the hardware profile's ``[interconnect]`` table)."""

from iosim.multigpu.allreduce import TilingAllReducePlan, tiling_allreduce_plan
from iosim.multigpu.cost import (PARALLELS, MultiGpuPrediction, predict_multigpu, predict_ring,
                                 predict_tiling_allreduce, predict_ulysses)
from iosim.multigpu.interconnect import Interconnect, Topology, interconnect_of
from iosim.multigpu.ring import BALANCES, RingPlan, StepCall, Transfer, kv_block_bytes, ring_plan
from iosim.multigpu.ulysses import UlyssesPlan, ulysses_plan

__all__ = ["BALANCES", "PARALLELS", "Interconnect", "MultiGpuPrediction", "RingPlan", "StepCall", "TilingAllReducePlan",
           "Topology", "Transfer", "UlyssesPlan", "interconnect_of", "kv_block_bytes", "predict_multigpu",
           "predict_ring", "predict_tiling_allreduce", "predict_ulysses", "ring_plan", "tiling_allreduce_plan",
           "ulysses_plan"]
