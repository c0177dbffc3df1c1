"""`flexpipe-sim cluster stats`: what the generated cluster looks like next to Table 1."""

from __future__ import annotations

import numpy as np
from rich.table import Table

from .engine.simulator import Simulation
from .fragmentation import TABLE1_C1
from .scenario import Scenario


def cluster_stats(sc: Scenario) -> dict[str, dict[str, float]]:
    if sc.cluster.mix is not None:  # a mixed cluster is built group by group
        from .heterosim import HeteroSimulation

        cl = HeteroSimulation(sc).cluster
    else:
        cl = Simulation(sc).cluster
    mem = np.array([g.tenant_mem_frac for g in cl.gpus])
    sm = np.array([g.tenant_sm_frac for g in cl.gpus])
    out = {}
    for name, v in (("memory", mem), ("sm", sm)):
        p50, p95 = np.percentile(v, [50, 95])
        out[name] = {"mean": float(v.mean()), "p50": float(p50), "p95": float(p95),
                     "share_10_30": float(((v >= 0.10) & (v <= 0.30)).mean())}
    out["topology"] = {
        "servers": len(cl.servers), "gpus": len(cl.gpus),
        "rdma_servers": sum(s.rdma for s in cl.servers),
        "racks": len({s.rack for s in cl.servers}),
        "free_memory_gib_total": sum(g.free_bytes for g in cl.gpus) / 2**30,
        "gpus_over_85pct_free": int(sum(g.free_bytes > 0.85 * g.capacity_bytes for g in cl.gpus)),
    }
    return out


def cluster_stats_table(sc: Scenario) -> Table:
    st = cluster_stats(sc)
    t = Table(title=f"{sc.name}: {sc.cluster.gpus} x {sc.cluster.gpu} on {sc.cluster.servers} servers "
                    f"(tenant scale {sc.cluster.tenant_scale})")
    t.add_column("tenant load")
    for c in ("mean", "P50", "P95", "GPUs at 10-30%"):
        t.add_column(c, justify="right")
    targets = {"memory": (*TABLE1_C1["memory"].values(), 0.3844), "sm": (*TABLE1_C1["sm"].values(), 0.3126)}
    for key, label in (("memory", "GPU memory"), ("sm", "SM time")):
        s = st[key]
        t.add_row(f"{label} (this cluster)", *(f"{100 * s[k]:.1f}%" for k in ("mean", "p50", "p95", "share_10_30")))
        t.add_row(f"{label} (paper Table 1, C1)", *(f"{100 * x:.1f}%" for x in targets[key]), style="dim")
    topo = st["topology"]
    t.caption = (f"{topo['rdma_servers']}/{topo['servers']} servers with RDMA, {topo['racks']} racks, "
                 f"{topo['free_memory_gib_total']:,.0f} GiB free GPU memory in total, "
                 f"{topo['gpus_over_85pct_free']} GPUs with >85% free memory")
    return t
