"""Exact red-blue pebble game (Hong & Kung 1981) on tiny attention instances: the true optimal IO for a given M.

The computation DAG (``attention_dag``) is attention at the granularity of Saha & Ye's Figure 1 with each summation
tree collapsed into one vertex (multi-input vertices, as in Hong & Kung's model with fan-in):

* inputs Q[i,k], K[j,k], V[j,k] (blue at the start);
* A[i,j] = exp(Σ_k Q[i,k]·K[j,k])   — predecessors Q[i,·], K[j,·]            (2d inputs);
* l[i]   = Σ_j A[i,j]                 — predecessors A[i,·]                    (N_kv inputs);
* O[i,k] = Σ_j A[i,j]·V[j,k] / l[i]   — predecessors A[i,·], V[·,k], l[i]      (2N_kv + 1 inputs);
* outputs O (must carry a blue pebble at the end).

Rules (Saha & Ye Def. 2.1): load (blue → red, cost 1), store (red → blue, cost 1), compute a vertex whose
predecessors are all red (cost 0), delete a red pebble (cost 0); at most M red pebbles at any time. The optimum is
found by Dijkstra/A* over (red, blue, computed) states with exact pruning:

* no recomputation (each vertex computed once; ``recompute=True`` lifts this for the tiniest instances);
* deletions happen only to make room (keeping a pebble never costs IO), and a computed vertex that is still
  needed is stored exactly when it is evicted (storing it earlier gains nothing: blue pebbles are free);
* a red vertex all of whose successors are computed, and that is not an unsaved output, is deleted at once;
* an output is stored the moment it is computed (it must be stored while red anyway);
* a computed vertex that is neither red nor blue but still needed makes a state dead;
* A* heuristic: unsaved outputs + needed inputs not red + needed spilled vertices not red (each needs ≥ 1 I/O).

M counts red pebbles, i.e. elements of fast memory, as in the FlashAttention and Saha & Ye papers.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass

import networkx as nx

from iosim.errors import IosimError

MAX_VERTICES = 62          # states are bitmasks of the vertices
DEFAULT_MAX_STATES = 2_000_000


def attention_dag(seq_q: int, seq_kv: int, head_dim: int) -> nx.DiGraph:
    """The collapsed attention DAG above; vertex attributes: kind ∈ {'input', 'A', 'l', 'O'}."""
    for name, v in (("seq_q", seq_q), ("seq_kv", seq_kv), ("head_dim", head_dim)):
        if not isinstance(v, int) or v < 1:
            raise IosimError(f"pebble: {name} must be a positive integer, got {v!r}")
    g = nx.DiGraph()
    for i, k in itertools.product(range(seq_q), range(head_dim)):
        g.add_node(("Q", i, k), kind="input")
    for j, k in itertools.product(range(seq_kv), range(head_dim)):
        g.add_node(("K", j, k), kind="input")
        g.add_node(("V", j, k), kind="input")
    for i, j in itertools.product(range(seq_q), range(seq_kv)):
        g.add_node(("A", i, j), kind="A")
        for k in range(head_dim):
            g.add_edge(("Q", i, k), ("A", i, j))
            g.add_edge(("K", j, k), ("A", i, j))
    for i in range(seq_q):
        g.add_node(("l", i), kind="l")
        for j in range(seq_kv):
            g.add_edge(("A", i, j), ("l", i))
        for k in range(head_dim):
            o = ("O", i, k)
            g.add_node(o, kind="O")
            g.add_edge(("l", i), o)
            for j in range(seq_kv):
                g.add_edge(("A", i, j), o)
                g.add_edge(("V", j, k), o)
    return g


def min_red_pebbles(g: nx.DiGraph) -> int:
    """The smallest M for which any complete calculation exists: max over vertices of (in-degree + 1)."""
    return max(g.in_degree(v) + 1 for v in g.nodes if g.in_degree(v) > 0)


@dataclass(frozen=True)
class PebbleResult:
    """Optimal IO (loads + stores) and one optimal move sequence ('load'|'store'|'compute'|'delete', vertex).

    Deletions of pebbles that became dead (every successor computed) are implicit in ``moves``; deletions made to
    free room are explicit."""

    io: int
    loads: int
    stores: int
    states_explored: int
    moves: tuple[tuple[str, object], ...]
    sram_elements: int
    recompute: bool


def optimal_io(g: nx.DiGraph, sram_elements: int, *, recompute: bool = False,
               max_states: int = DEFAULT_MAX_STATES) -> PebbleResult:
    """Exact minimum number of I/Os to pebble ``g`` with ``sram_elements`` red pebbles (see the module docstring).

    Raises IosimError when M is below ``min_red_pebbles(g)`` (no calculation exists), when the DAG has more than
    MAX_VERTICES vertices, or when the search exceeds ``max_states`` states.
    """
    nodes = list(nx.topological_sort(g))
    n = len(nodes)
    if n > MAX_VERTICES:
        raise IosimError(f"pebble: {n} vertices is too many for exact search (at most {MAX_VERTICES}); "
                         "use seq_q, seq_kv, head_dim <= 3 or so")
    m = sram_elements
    need = min_red_pebbles(g)
    if m < need:
        raise IosimError(f"pebble: M={m} red pebbles cannot compute a vertex with {need - 1} predecessors; use M >= {need}")
    idx = {v: t for t, v in enumerate(nodes)}
    pred = [0] * n
    succ = [0] * n
    for u, v in g.edges:
        pred[idx[v]] |= 1 << idx[u]
        succ[idx[u]] |= 1 << idx[v]
    inputs = sum(1 << idx[v] for v in g.nodes if g.in_degree(v) == 0)
    outputs = sum(1 << idx[v] for v in g.nodes if g.out_degree(v) == 0)
    computable = [t for t in range(n) if not (inputs >> t) & 1]

    all_bits = (1 << n) - 1

    def needed_mask(done: int) -> int:
        """Vertices with an uncomputed successor: the union of the predecessor sets of uncomputed vertices
        (everything may be needed again when recomputation is allowed)."""
        if recompute:
            return all_bits
        out = 0
        x = all_bits & ~done & ~inputs
        while x:
            low = x & -x
            out |= pred[low.bit_length() - 1]
            x ^= low
        return out

    def canon(red: int, blue: int, done: int):
        """Delete dead red pebbles; refuse states where a needed computed vertex is lost. Returns (state, needed)."""
        nd = needed_mask(done)
        if recompute:
            return (red, blue, 0), nd
        red &= nd | (outputs & ~blue)
        if done & ~red & ~blue & ~inputs & nd:
            return None, nd
        return (red, blue, done), nd

    def heuristic(red: int, blue: int, nd: int) -> int:
        h = (outputs & ~blue).bit_count()      # each unsaved output needs its store
        if not recompute:                       # each needed vertex that is only blue needs a load
            h += ((inputs | blue) & ~red & nd).bit_count()
        return h

    start, nd0 = canon(0, inputs, 0)
    counter = itertools.count()
    dist = {start: 0}
    parent: dict = {start: None}
    heap = [(heuristic(start[0], start[1], nd0), 0, 0, next(counter), start, nd0)]
    explored = 0
    while heap:
        _, _, cost, _, state, nd = heapq.heappop(heap)
        if dist.get(state, 1 << 60) < cost:
            continue
        red, blue, done = state
        if outputs & ~blue == 0:
            return _result(state, cost, parent, nodes, explored, m, recompute)
        explored += 1
        if explored > max_states:
            raise IosimError(f"pebble: more than {max_states:,} states explored (M={m}, {n} vertices); "
                             "use a smaller instance or raise max_states")

        def push(new_red, new_blue, new_done, step_cost, move):
            st, nd2 = canon(new_red, new_blue, new_done)
            if st is None:
                return
            c = cost + step_cost
            if c < dist.get(st, 1 << 60):
                dist[st] = c
                parent[st] = (state, move)
                # ties on f go to the state with more vertices computed (depth first among equals)
                heapq.heappush(heap, (c + heuristic(st[0], st[1], nd2), -st[2].bit_count(), c, next(counter), st, nd2))

        # actions that place a red pebble: (bit, protected predecessors, step cost, new blue, new done, move)
        actions = []
        y = blue & ~red & nd
        while y:
            low = y & -y
            y ^= low
            actions.append((low, 0, 1, blue, done, ("load", nodes[low.bit_length() - 1])))
        for t in computable:
            bit = 1 << t
            if red & bit or (done & bit and not recompute) or pred[t] & ~red:
                continue
            out_new = bool(outputs & bit and not blue & bit)
            actions.append((bit, pred[t], 1 if out_new else 0, blue | (bit if out_new else 0), done | bit,
                            ("compute", nodes[t])))
        full = red.bit_count() >= m
        for bit, keep, step, nb, ndone, move in actions:
            if not full:
                push(red | bit, nb, ndone, step, move)
                continue
            v = red & ~keep
            while v:
                low = v & -v
                v ^= low
                victim = nodes[low.bit_length() - 1]
                if low & ~blue & ~inputs:  # evicting a computed, still-needed vertex: store it first (spill)
                    push((red & ~low) | bit, nb | low, ndone, step + 1, move + (("spill", victim),))
                    if recompute:          # or drop it and compute it again later
                        push((red & ~low) | bit, nb, ndone, step, move + (("delete", victim),))
                else:
                    push((red & ~low) | bit, nb, ndone, step, move + (("delete", victim),))
    raise IosimError("pebble: no complete calculation found (this is a bug: M >= min_red_pebbles should suffice)")


def _result(state, cost, parent, nodes, explored, m, recompute) -> PebbleResult:
    """Walk the parent links back; expand each step into (store of the evicted vertex,) load/compute (, store of a
    new output)."""
    steps = []
    s = state
    while parent[s] is not None:
        prev, move = parent[s]
        steps.append(move)
        s = prev
    moves: list = []
    for move in reversed(steps):
        kind, vertex = move[0], move[1]
        for extra, victim in move[2:]:
            if extra == "spill":
                moves.append(("store", victim))
            moves.append(("delete", victim))
        moves.append((kind, vertex))
        if kind == "compute" and vertex[0] == "O":
            moves.append(("store", vertex))
    loads = sum(1 for k, _ in moves if k == "load")
    stores = sum(1 for k, _ in moves if k == "store")
    if loads + stores != cost:
        raise IosimError(f"pebble: move list ({loads} loads + {stores} stores) disagrees with the cost {cost}")
    return PebbleResult(cost, loads, stores, explored, tuple(moves), m, recompute)


def attention_optimal_io(seq_q: int, seq_kv: int, head_dim: int, sram_elements: int, **kw) -> PebbleResult:
    """Optimal IO of the collapsed attention DAG (N_q × N_kv scores, head dim d) with M = ``sram_elements``."""
    return optimal_io(attention_dag(seq_q, seq_kv, head_dim), sram_elements, **kw)


def trivial_io(seq_q: int, seq_kv: int, head_dim: int) -> int:
    """Inputs read once + outputs written once: N_q·d + 2·N_kv·d + N_q·d."""
    return 2 * seq_q * head_dim + 2 * seq_kv * head_dim
