"""The links between GPUs: the ``[interconnect]`` table of a hardware profile, the topology of P devices, and the
time of a transfer over it (point-to-point, all-to-all, ring AllReduce).

Profile format (same entry shape as ``[values]``: every number with its kind and source)::

    [interconnect]
    fabric = { value = "nvlink", kind = "datasheet", source = "..." }        # nvlink | hccs | pcie
    fabric_generation = { value = 4, ... }
    topology = { value = "switch", ... }        # switch (NVSwitch) | full-mesh | hybrid-cube-mesh
    links_per_gpu = { value = 18, ... }
    link_bandwidth_bytes_per_s = { value = 25e9, ... }        # one link, one direction
    gpu_bandwidth_bytes_per_s = { value = 450e9, ... }        # all links of one GPU, one direction
    peer_bandwidth_bytes_per_s = { value = 450e9, ... }       # one GPU to one ring neighbour, one direction
    gpus_per_node = { value = 8, ... }
    pcie_generation = { value = 5, ... }
    pcie_bandwidth_bytes_per_s = { value = 63e9, ... }        # x16, one direction
    launch_latency_s = { value = 8.4e-6, ... }                # fixed cost of one NCCL operation
    step_latency_s = { value = 3.4e-6, ... }                  # one hop (ring step) inside a node
    internode_bandwidth_bytes_per_s = { value = 50e9, ... }   # one GPU's NIC, one direction
    internode_step_latency_s = { value = 9.6e-6, ... }        # one hop across nodes

Bandwidths are per direction (links are full duplex: a GPU sends and receives at this rate at once). On a switch
(NVSwitch) a GPU reaches any peer at its full ``gpu_bandwidth``; on a full mesh (Ascend HCCS) or the DGX-1 hybrid cube
mesh, one peer is reached over the links that join the pair only (``peer_bandwidth``), while an all-to-all uses every
link at once. Beyond ``gpus_per_node`` GPUs, traffic between nodes goes through each GPU's own NIC.

Latency follows NCCL's own cost model (src/graph/tuning.cc: a fixed ``baseLat`` per operation plus ``hwLat`` per ring
step, NVLink or network): one point-to-point transfer pays launch + one step; an AllReduce launch + 2(P-1) steps;
an all-to-all (P-1 concurrent sends) launch + one step. These are NCCL's estimates, not measurements; HCCL (Ascend)
is priced with the same constants (assumed).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from iosim.errors import IosimError
from iosim.hwprofile import Hardware, Source, _choice_entry, _entry, _fail, load_hardware

FABRICS = ("nvlink", "hccs", "pcie")
TOPOLOGIES = ("switch", "full-mesh", "hybrid-cube-mesh")
MAX_DEVICES = 1024

_INT_KEYS = ("fabric_generation", "links_per_gpu", "gpus_per_node", "pcie_generation")
_FLOAT_KEYS = ("link_bandwidth_bytes_per_s", "gpu_bandwidth_bytes_per_s", "peer_bandwidth_bytes_per_s",
               "pcie_bandwidth_bytes_per_s", "launch_latency_s", "step_latency_s",
               "internode_bandwidth_bytes_per_s", "internode_step_latency_s")
_CHOICE_KEYS = {"fabric": FABRICS, "topology": TOPOLOGIES}
KEYS = tuple(_CHOICE_KEYS) + _INT_KEYS + _FLOAT_KEYS


@dataclass(frozen=True)
class Interconnect:
    """One GPU's links. Bandwidths per direction, base units; ``sources`` maps each key to its kind and source."""

    fabric: str
    topology: str
    fabric_generation: int
    links_per_gpu: int
    link_bandwidth_bytes_per_s: float
    gpu_bandwidth_bytes_per_s: float
    peer_bandwidth_bytes_per_s: float
    gpus_per_node: int
    pcie_generation: int
    pcie_bandwidth_bytes_per_s: float
    launch_latency_s: float
    step_latency_s: float
    internode_bandwidth_bytes_per_s: float
    internode_step_latency_s: float
    sources: Mapping[str, Source] = field(default_factory=dict, compare=False, repr=False)

    def rows(self) -> list[tuple[str, object, str, str]]:
        """(key, value, kind, source) for display."""
        return [(k, getattr(self, k), self.sources[k].kind if k in self.sources else "",
                 self.sources[k].text if k in self.sources else "") for k in KEYS]


def parse_interconnect(table: object, path: str) -> Interconnect:
    """Validate an ``[interconnect]`` table; errors name the file and the key."""
    if not isinstance(table, dict):
        raise _fail(path, "interconnect", "expected an [interconnect] table of {value, kind, source} entries")
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise _fail(path, f"interconnect.{unknown[0]}", f"unknown key; known keys: {', '.join(KEYS)}")
    missing = [k for k in KEYS if k not in table]
    if missing:
        raise _fail(path, f"interconnect.{missing[0]}", "missing (every interconnect key is required; mark a number "
                    "you do not know kind = \"assumed\")")
    out: dict[str, object] = {}
    sources: dict[str, Source] = {}
    for k, choices in _CHOICE_KEYS.items():
        out[k], sources[k] = _choice_entry(path, f"interconnect.{k}", table[k], choices)
    for k in _INT_KEYS + _FLOAT_KEYS:
        out[k], sources[k] = _entry(path, f"interconnect.{k}", table[k], k in _INT_KEYS)
    ic = Interconnect(**out, sources=MappingProxyType(sources))  # type: ignore[arg-type]
    agg = ic.links_per_gpu * ic.link_bandwidth_bytes_per_s
    if abs(agg - ic.gpu_bandwidth_bytes_per_s) > 0.02 * agg:
        raise _fail(path, "interconnect.gpu_bandwidth_bytes_per_s", f"{ic.gpu_bandwidth_bytes_per_s:.4g} B/s is not "
                    f"links_per_gpu × link_bandwidth = {agg:.4g} B/s (within 2%)")
    if ic.peer_bandwidth_bytes_per_s > ic.gpu_bandwidth_bytes_per_s:
        raise _fail(path, "interconnect.peer_bandwidth_bytes_per_s", "one peer cannot get more than the GPU's "
                    f"{ic.gpu_bandwidth_bytes_per_s:.4g} B/s (gpu_bandwidth_bytes_per_s)")
    return ic


_CACHE: dict[tuple[str, float], Interconnect] = {}


def interconnect_of(hardware: Hardware | str) -> Interconnect:
    """The ``[interconnect]`` table of a profile (by Hardware, name or path); IosimError if it has none."""
    hw = load_hardware(hardware) if isinstance(hardware, (str, Path)) else hardware
    if not isinstance(hw, Hardware):
        raise IosimError(f"hardware must be a Hardware or a profile name or path, got {type(hw).__name__}")
    path = Path(hw.path)
    try:
        key = (str(path), path.stat().st_mtime)
    except OSError:
        raise IosimError(f"hardware {hw.name!r}: its profile file {hw.path!r} cannot be read for its [interconnect] "
                         "table; load the profile from a file") from None
    if key not in _CACHE:
        doc = tomllib.loads(path.read_text())
        if "interconnect" not in doc:
            raise IosimError(f"{path}: no [interconnect] table, so {hw.name} has no links between GPUs; add one "
                             "(every key of hardware/h100.toml's [interconnect], with kind and source)")
        _CACHE[key] = parse_interconnect(doc["interconnect"], str(path))
    return _CACHE[key]


@dataclass(frozen=True)
class Topology:
    """P devices in ``nodes`` nodes of up to ``gpus_per_node``; the ring visits each node's GPUs in turn."""

    devices: int
    gpus_per_node: int

    def __post_init__(self) -> None:
        check_devices(self.devices)

    @property
    def nodes(self) -> int:
        return -(-self.devices // self.gpus_per_node)

    @property
    def local(self) -> int:
        """GPUs of one node taking part (all P when they fit in one node)."""
        return min(self.devices, self.gpus_per_node)


def check_devices(p: object, flag: str = "--devices") -> int:
    if isinstance(p, bool) or not isinstance(p, int) or not 1 <= p <= MAX_DEVICES:
        raise IosimError(f"devices must be a whole number from 1 to {MAX_DEVICES}, got {p!r} (set {flag})")
    return p


# --- transfer times ---------------------------------------------------------------------------------------------------

def p2p_time_s(ic: Interconnect, topo: Topology, nbytes: int) -> float:
    """One ring step: every GPU sends ``nbytes`` to its ring successor at once. Inside a node a neighbour is reached at
    ``peer_bandwidth``; with several nodes some hops cross a NIC, and the step lasts as long as its slowest hop."""
    if topo.devices == 1 or nbytes == 0:
        return 0.0
    if topo.nodes == 1:
        return ic.launch_latency_s + ic.step_latency_s + nbytes / ic.peer_bandwidth_bytes_per_s
    bw = min(ic.peer_bandwidth_bytes_per_s, ic.internode_bandwidth_bytes_per_s)
    return ic.launch_latency_s + ic.internode_step_latency_s + nbytes / bw


def alltoall_time_s(ic: Interconnect, topo: Topology, bytes_per_peer: int) -> float:
    """All-to-all: every GPU sends ``bytes_per_peer`` to each of the P-1 others, all at once. Inside the node the sends
    share the GPU's links (a switch: ``gpu_bandwidth`` in all; a mesh: each peer over its own links,
    ``peer_bandwidth``), across nodes they share the GPU's NIC; the slower of the two sets the time."""
    if topo.devices == 1 or bytes_per_peer == 0:
        return 0.0
    intra_peers, inter_peers = topo.local - 1, topo.devices - topo.local
    intra = max(intra_peers * bytes_per_peer / ic.gpu_bandwidth_bytes_per_s,
                bytes_per_peer / ic.peer_bandwidth_bytes_per_s if intra_peers else 0.0)
    inter = inter_peers * bytes_per_peer / ic.internode_bandwidth_bytes_per_s
    lat = ic.launch_latency_s + (ic.internode_step_latency_s if inter_peers else ic.step_latency_s)
    return lat + max(intra, inter)


def collective_bandwidth_bytes_per_s(ic: Interconnect, topo: Topology) -> float:
    """Per-direction bandwidth one GPU gets in a collective that talks to all its peers: a switch gives the GPU's
    full ``gpu_bandwidth``; a mesh at most (local GPUs − 1) × ``peer_bandwidth`` (every link at once); with several
    nodes the GPU's NIC caps it."""
    bw = ic.gpu_bandwidth_bytes_per_s if ic.topology == "switch" else \
        min(ic.gpu_bandwidth_bytes_per_s, max(1, topo.local - 1) * ic.peer_bandwidth_bytes_per_s)
    return bw if topo.nodes == 1 else min(bw, ic.internode_bandwidth_bytes_per_s)


def allreduce_time_s(ic: Interconnect, topo: Topology, nbytes: int) -> float:
    """AllReduce of an ``nbytes`` message: reduce-scatter + all-gather, each GPU sending 2(P−1)/P·nbytes at the
    collective bandwidth (``collective_bandwidth_bytes_per_s``); latency as NCCL's ring model: launch + 2(P−1)
    step latencies (network steps for the 2(nodes−1) hops between nodes)."""
    p = topo.devices
    if p == 1 or nbytes == 0:
        return 0.0
    steps, inter_steps = 2 * (p - 1), 2 * (topo.nodes - 1)
    lat = ic.launch_latency_s + (steps - inter_steps) * ic.step_latency_s + inter_steps * ic.internode_step_latency_s
    return lat + 2 * (p - 1) * (nbytes / p) / collective_bandwidth_bytes_per_s(ic, topo)
