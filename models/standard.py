"""Standard attention, Algorithm 0 of Dao et al. (arXiv 2205.14135 §2.2), as three kernels:

1. ``qk``: tiled GEMM S = QKᵀ·scale, one CTA per (i, j) output tile, grid (m, n, b·h): loads Q_i (B_r×d) and K_j
   (B_c×d), writes S_ij. Reads Q·T_c + K·T_r; writes N_q·N_kv.
2. ``softmax``: P = softmax(S) row-wise (causal mask applied here, from indices), one CTA per block of B_r rows.
   If a row block of S fits in shared memory it is read once; otherwise twice (online max/sum pass, then the
   normalising pass), as long-row softmax kernels do. Writes P.
3. ``pv``: O = PV, one CTA per row block: loads P_i,j and V_j for every j, writes O_i. Reads P once and V·T_r.

S and P are stored in the problem dtype (PyTorch's math path). The paper's idealised count 4Nd + 4N² is the
limit of large tiles (T_r = T_c = 1 re-reads); with real tiles the K and Q re-reads add N²d(1/B_r + 1/B_c).

Work: qk matmul 2·r·c·d + other r·c (scale); softmax exp r·c, other 4·r·c (max, subtract, sum, divide)
(+2·r·c for the second pass); pv matmul 2·r·c·d.
"""

from __future__ import annotations

from iosim.models._common import check_fit, check_head_dim, kv_tile, q_tile, qkvo_tensors
from iosim.problem import KernelConfig, Problem
from iosim.registry import register
from iosim.schedule import Buffer, Compute, GridAxis, Kernel, Load, Loop, Schedule, Span, Store, TensorSpec, Tile, Work, cdiv, full, point, var

DEFAULT_TILES = (128, 128)


def score_tile(p: Problem, name: str, b, h, rows: Span, cols: Span) -> Tile:
    return Tile(name, (point(b, p.batch), point(h, p.heads), rows, cols))


def softmax_one_pass(p: Problem, bm: int, limit_bytes: int | None) -> bool:
    """True if a B_r × N_kv row block of S fits in shared memory (then S is read once)."""
    return limit_bytes is not None and isinstance(p.seq_kv, int) and bm * p.seq_kv * p.elem_bytes <= limit_bytes


@register("standard", "Standard attention (Algorithm 0): S = QKᵀ written to HBM, softmax kernel, O = PV — three kernels")
def build(p: Problem, cfg: KernelConfig, hw=None) -> Schedule:
    check_head_dim(p, "standard", max_head_dim=1024, multiple=1)
    bm, bn = cfg.block_m or DEFAULT_TILES[0], cfg.block_n or DEFAULT_TILES[1]
    d, e = p.head_dim, p.elem_bytes
    tm, tn = cdiv(p.seq_q, bm), cdiv(p.seq_kv, bn)
    b, h, pm, pn, j = var("b"), var("h"), var("pid_m"), var("pid_n"), var("j")
    rows, cols_n, cols_j = Span(pm, bm, p.seq_q), Span(pn, bn, p.seq_kv), Span(j, bn, p.seq_kv)
    bh = (GridAxis("b", b, p.batch), GridAxis("h", h, p.heads))
    grid_mn = (GridAxis("m", pm, tm), GridAxis("n", pn, tn)) + bh
    grid_m = (GridAxis("m", pm, tm),) + bh

    qk = Kernel("standard_qk", grid_mn, (Buffer("q", (bm, d), e), Buffer("k", (bn, d), e), Buffer("s", (bm, bn), 4, space="reg")), (
        Load("q", q_tile(p, "Q", b, h, rows)),
        Load("k", kv_tile(p, "K", b, h, cols_n)),
        Compute("qk", ("q", "k", "s"), matmul=(Work(2 * d, (rows, cols_n)),), other=(Work(1, (rows, cols_n)),)),
        Store("s", score_tile(p, "S", b, h, rows, cols_n)),
    ))

    limit = cfg.sram_bytes if cfg.sram_bytes is not None else (hw.smem_per_block_bytes if hw is not None else None)
    if softmax_one_pass(p, bm, limit):
        sm_buffers = (Buffer("s", (bm, p.seq_kv), e),)
        sm_body = (
            Loop(j, 0, tn, (Load("s", score_tile(p, "S", b, h, rows, cols_j)),)),
            Compute("softmax", ("s",), exp=(Work(1, (rows, full(p.seq_kv))),), other=(Work(4, (rows, full(p.seq_kv))),)),
            Loop(j, 0, tn, (Store("s", score_tile(p, "P", b, h, rows, cols_j)),)),
        )
    else:
        # running row max and sum of the online pass live in registers (fp32)
        sm_buffers = (Buffer("s", (bm, bn), e, pipelined=True), Buffer("m", (bm,), 4, space="reg"),
                      Buffer("l", (bm,), 4, space="reg"))
        sm_body = (
            Loop(j, 0, tn, (Load("s", score_tile(p, "S", b, h, rows, cols_j)),
                            Compute("softmax_stats", ("s",), exp=(Work(1, (rows, cols_j)),), other=(Work(4, (rows, cols_j)),)))),
            Loop(j, 0, tn, (Load("s", score_tile(p, "S", b, h, rows, cols_j)),
                            Compute("softmax_normalize", ("s",), exp=(Work(1, (rows, cols_j)),), other=(Work(2, (rows, cols_j)),)),
                            Store("s", score_tile(p, "P", b, h, rows, cols_j)))),
        )
    softmax = Kernel("standard_softmax", grid_m, sm_buffers, sm_body)

    pv = Kernel("standard_pv", grid_m, (Buffer("p", (bm, bn), e, pipelined=True), Buffer("v", (bn, d), e, pipelined=True),
                                        Buffer("acc", (bm, d), 4, space="reg")), (
        Loop(j, 0, tn, (
            Load("p", score_tile(p, "P", b, h, rows, cols_j)),
            Load("v", kv_tile(p, "V", b, h, cols_j)),
            Compute("pv", ("p", "v", "acc"), matmul=(Work(2 * d, (rows, cols_j)),)),
        )),
        Store("acc", q_tile(p, "O", b, h, rows)),
    ))
    for k in (qk, softmax, pv):
        check_fit(k, cfg, hw, f"block_m={bm}, block_n={bn}, head_dim={d}")
    scores = {n: TensorSpec(n, (p.batch, p.heads, p.seq_q, p.seq_kv), e, "scratch") for n in ("S", "P")}
    return Schedule("standard", p, cfg, qkvo_tensors(p) | scores, (qk, softmax, pv))
