"""The generated cluster: the paper's shape, Table 1 fragmentation, links, and the memory ledger."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from flexpipe_sim.cli import app
from flexpipe_sim.cluster import HostCache, OverCommitError, gpus_per_server
from flexpipe_sim.clusterstats import cluster_stats
from flexpipe_sim.fragmentation import MEMORY_C1, SM_C1, TABLE1_C1
from flexpipe_sim.hardware import LinkKind
from flexpipe_sim.scenario import load_scenario

from .conftest import ROOT


def test_82_gpus_on_42_servers():
    counts = gpus_per_server(42, 82)
    assert sum(counts) == 82 and counts.count(2) == 40 and counts.count(1) == 2


@pytest.mark.parametrize("curve,target", [(MEMORY_C1, TABLE1_C1["memory"]), (SM_C1, TABLE1_C1["sm"])])
def test_tenant_curves_hit_table1(curve, target):
    v = curve.sample(200_000, np.random.default_rng(0))
    assert curve.mean == pytest.approx(target["mean"], abs=0.005)
    assert v.mean() == pytest.approx(target["mean"], abs=0.005)
    assert np.percentile(v, 50) == pytest.approx(target["p50"], abs=0.005)
    assert np.percentile(v, 95) == pytest.approx(target["p95"], abs=0.01)


def test_share_of_gpus_at_10_to_30_percent():
    for curve, share in ((MEMORY_C1, 0.3844), (SM_C1, 0.3126)):
        v = curve.sample(200_000, np.random.default_rng(1))
        assert ((v >= 0.1) & (v <= 0.3)).mean() == pytest.approx(share, abs=0.01)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_default_cluster_statistics_match_table1(seed):
    sc = load_scenario(ROOT / "scenarios" / "default.yaml", [f"seed={seed}"])
    st = cluster_stats(sc)
    for key in ("memory", "sm"):
        got, want = st[key], TABLE1_C1[key]
        assert got["mean"] == pytest.approx(want["mean"], abs=0.02), key
        assert got["p50"] == pytest.approx(want["p50"], abs=0.03), key
        # With 82 GPUs the P95 is interpolated between two draws from the steep top of the curve
        # (SM: 40% at the 90th percentile, 80% at the 95th), so it is checked loosely; the curves
        # themselves are checked tightly above.
        assert got["p95"] == pytest.approx(want["p95"], abs=0.15), key
    assert st["topology"]["servers"] == 42 and st["topology"]["gpus"] == 82


def test_links_follow_topology():
    from flexpipe_sim.engine.simulator import Simulation

    sc = load_scenario(ROOT / "scenarios" / "default.yaml")
    cl = Simulation(sc).cluster
    s0 = cl.servers[0]
    assert cl.link_between(s0.gpu_ids[0], s0.gpu_ids[1]).kind in (LinkKind.PCIE, LinkKind.NVLINK)
    rdma = [s for s in cl.servers if s.rdma]
    tcp = [s for s in cl.servers if not s.rdma]
    assert cl.link_between(rdma[0].gpu_ids[0], rdma[1].gpu_ids[0]).kind is LinkKind.RDMA
    assert cl.link_between(rdma[0].gpu_ids[0], tcp[0].gpu_ids[0]).kind is LinkKind.TCP
    assert len(rdma) == round(0.8 * 42)


def test_ledger_refuses_overcommit():
    from flexpipe_sim.engine.simulator import Simulation

    cl = Simulation(load_scenario(ROOT / "scenarios" / "default.yaml")).cluster
    g = cl.gpus[0]
    g.allocate("a", g.free_bytes)
    with pytest.raises(OverCommitError):
        g.allocate("b", 1)
    assert g.free_bytes == 0
    g.release("a")
    cl.check_ledger()


def test_host_cache_evicts_least_recently_used():
    c = HostCache(100)
    c.touch(("m", 0, 1), 40)
    c.touch(("m", 1, 2), 40)
    c.touch(("m", 0, 1), 40)  # refresh
    c.touch(("m", 2, 3), 40)  # evicts (m, 1, 2)
    assert c.contains(("m", 0, 1)) and c.contains(("m", 2, 3)) and not c.contains(("m", 1, 2))
    assert c.used_bytes <= 100


def test_cluster_stats_command():
    res = CliRunner().invoke(app, ["cluster", "stats", str(ROOT / "scenarios" / "default.yaml")])
    assert res.exit_code == 0, res.output
    assert "Table 1" in res.output and "GPU memory" in res.output


def test_policy_view_follows_the_ledger_and_host_caches():
    """Simulation.view rebuilds its GPU views (and their tuple) only when some GPU's ledger
    changed, and the host caches' keys only when some cache's did: a change shows at once,
    otherwise the same objects come back (policies cache by them)."""
    from flexpipe_sim.engine.simulator import Simulation

    sim = Simulation(load_scenario(ROOT / "scenarios/default.yaml"))
    a = sim.view()
    b = sim.view()
    assert b.gpus is a.gpus and b.host_cached is a.host_cached
    g = sim.cluster.gpus[3]
    g.allocate("llama2-7b/weights/0-4", 2**30)
    c = sim.view()
    assert c.gpus is not a.gpus and c.gpus[3].free_bytes == a.gpus[3].free_bytes - 2**30
    assert "llama2-7b" in c.gpus[3].models and all(c.gpus[i] is a.gpus[i] for i in range(len(a.gpus)) if i != 3)
    g.release("llama2-7b/weights/0-4")
    assert sim.view().gpus[3].free_bytes == a.gpus[3].free_bytes
    server = sim.cluster.servers[g.server]
    server.host_cache.touch(("llama2-7b", 0, 4), 2**30)
    assert ("llama2-7b", 0, 4) in sim.view().host_cached[g.server]
