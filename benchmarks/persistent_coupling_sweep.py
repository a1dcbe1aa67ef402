"""Issue 21 experiment (session 11): the L2-coupled item timeline of the persistent Triton forward, swept over kappa
on the persistent-Triton runs of held/held2/held3 (reports/persistent_coupled_timeline.md). A standalone copy of the
algorithm as it was chosen (before iosim.memory.coupled existed); 2 cores: about 15 minutes for 4 kappas.

    .venv/bin/python benchmarks/persistent_coupling_sweep.py 0,0.3,1,3
"""
import csv, json, os, re, sys
from concurrent.futures import ProcessPoolExecutor
import numpy as np
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks", "gpu")]
from iosim.hwprofile import load_hardware
from iosim.problem import Problem
from iosim.memory.hierarchy import _Sink
from iosim.memory.l2 import L2Geometry, choose_stride
from iosim.memory.layout import layout
from iosim.memory.scheduler import work_items
from iosim.memory.trace import expand_kernel, kernel_durations
from iosim.occupancy import occupancy
from compare_persistent import triton_schedule

def simulate(p, order, workers, kappa, hw='h100', stride=None, width=0.5, ema=0.5, jitter=0.0, seed=0, slots=None):
    hw = load_hardware(hw) if isinstance(hw, str) else hw
    sched = triton_schedule(p, 'triton_persistent', order, hw.sm_count, workers)
    k = sched.kernels[0]; lay = layout(sched)
    dur = kernel_durations(sched, k).astype(np.int64)
    P = len(dur)
    occ = occupancy(k, hw, getattr(sched.config, 'num_stages', 1), None)
    S = occ.slots if slots is None else slots
    geom = L2Geometry.from_hardware(hw)
    st = choose_stride(stride, geom, 96)
    sink = _Sink(geom, st, 1)
    rng = np.random.default_rng(seed)
    nxt_tick = np.zeros(P, np.int64); tau = np.full(P, np.inf); rate = np.ones(P); mrate = np.zeros(P)
    slot_of = np.full(P, -1)
    n0 = min(P, S); tau[:n0] = 0.0; slot_of[:n0] = np.arange(n0); waiting = n0
    live = np.arange(n0)
    t0 = 0.0
    read_sectors = np.zeros(P)
    while len(live):
        t1 = t0 + width
        # ticks each live program issues in [t0,t1): k with tau + (k-nxt)*rate < t1
        n_iss = np.ceil((t1 - tau[live]) / rate[live]).astype(np.int64)
        n_iss = np.clip(n_iss, 0, dur[live] - nxt_tick[live])
        lo = nxt_tick[live]; hi = lo + n_iss
        sel = n_iss > 0
        if sel.any():
            lv = live[sel]
            tr = expand_kernel(sched, k, lay, lv, lo[sel], hi[sel])
            idx = sink.sampled(tr.addr, tr.nbytes)
            pr, tk = tr.prog[idx], tr.tick[idx]
            tm = tau[pr] + (tk - nxt_tick[pr]) * rate[pr]
            pm = np.lexsort((tr.order[idx], slot_of[pr], tm))
            idx = idx[pm]; pr = pr[pm]
            nf = sink.l2.feed_ranges(tr.addr[idx], tr.nbytes[idx], tr.write[idx], (slot_of[pr] % hw.sm_count).astype(np.int16), None)
            rd = ~tr.write[idx]
            miss = np.bincount(pr[rd], weights=nf[rd], minlength=P) * st   # estimated DRAM sectors
            nt = np.zeros(P); nt[lv] = n_iss[sel]
            # per-tick miss sectors in this window, smoothed
            m = np.where(nt > 0, miss / np.maximum(nt, 1), 0.0)
            upd = lv
            mrate[upd] = ema * mrate[upd] + (1 - ema) * m[upd]
            tau[lv] = tau[lv] + n_iss[sel] * rate[lv]
            nxt_tick[lv] += n_iss[sel]
            rate[lv] = 1.0 + kappa * mrate[lv] / 1024.0
            if jitter > 0:
                rate[lv] *= np.exp(jitter * rng.standard_normal(len(lv)))
        done = live[nxt_tick[live] >= dur[live]]
        live = live[nxt_tick[live] < dur[live]]
        for d in done:   # a waiting program takes the slot at the end time
            if waiting < P:
                q = waiting; waiting += 1
                tau[q] = tau[d]; slot_of[q] = slot_of[d]; live = np.append(live, q)
        t0 = t1
    res = sink.result()
    return res.dram_read_sectors * 32, t0, st

R = os.path.join(ROOT, 'reports', 'validation', 'h100', 'persistent') + os.sep


def rows():
    out={}
    for f in ('fitted.csv','held2_now.csv','held3.csv'):
        for r in csv.DictReader(open(R+f)):
            if r['impl']!='triton_persistent': continue
            m=re.match(r'B(\d+) H(\d+)/(\d+) Nq(\d+) Nkv(\d+) d(\d+)( causal)?',r['shape'])
            B,H,Hk,Nq,Nk,d=map(int,m.groups()[:6]); c=bool(m.group(7))
            out[int(r['id'])]=dict(id=int(r['id']),set=f,p=(B,H,Hk,Nq,Nk,d,c),order=r['order'],W=int(float(r['grid_meas'])),
              qkv=int(r['qkv_bytes']),meas=float(r['dram_read_meas']),pred=float(r['dram_read_pred']))
    return list(out.values())
def one(a):
    r,kap,kw=a
    B,H,Hk,Nq,Nk,d,c=r['p']
    dr,end,st=simulate(Problem(B,H,Hk,Nq,Nk,d,'bf16',c),r['order'],r['W'],kap,**kw)
    return r['id'],kap,dr
if __name__=='__main__':
    kaps=[float(x) for x in sys.argv[1].split(',')]; kw=json.loads(sys.argv[2]) if len(sys.argv)>2 else {}
    rs=rows(); jobs=[(r,k,kw) for r in rs for k in kaps]
    with ProcessPoolExecutor(os.cpu_count()) as ex: res=list(ex.map(one,jobs))
    d={(i,k):v for i,k,v in res}
    print('id set order shape W meas pred ' + ' '.join(f'k{k}' for k in kaps))
    errs={k:[] for k in kaps}; errs['pred']=[]
    for r in sorted(rs,key=lambda r:r['id']):
        q=r['qkv']; line=f"{r['id']} {r['set'][:6]} {r['order']} {r['p']} W{r['W']} {r['meas']/q:.2f} {r['pred']/q:.2f} "
        line+=' '.join(f"{d[(r['id'],k)]/q:.2f}" for k in kaps)
        print(line)
        if r['pred']>1.15*q or r['meas']>1.15*q:
            errs['pred'].append(r['pred']/r['meas']-1)
            for k in kaps: errs[k].append(d[(r['id'],k)]/r['meas']-1)
    for k,v in errs.items():
        v=np.array(v); print(k,'n',len(v),'median|err|',np.median(abs(v)).round(3),'worst',v[np.argmax(abs(v))].round(2))
