"""Fine-grained model partitioning (FlexPipe §5, Eq. 2) by dynamic programming.

    min over contiguous partitions S_1..S_K of  sum_k | t_c(S_k) + s_p(S_k)/B - C |  +  lambda * R(S_k)
    subject to  s_p(S_k) <= M_GPU for every k

Vertices are the model's layers in order (cuts at layer boundaries are transformer-block
boundaries, which is what R favours); `cut_penalty[i]` is R for a cut after vertex i (0 for all
block boundaries by default; an operator-level graph would penalise cuts inside a block).
C, the target cycle per stage, defaults to the balanced share (sum of t_c + s_p/B) / K. Coarser
granularities are merges of adjacent finest stages (Fig. 7), found by the same DP over the finest
stages.
"""

from __future__ import annotations

import math


def partition(t_c: list[float], s_p: list[float], k: int, bandwidth: float, mem_limit: float, *,
              target: float | None = None, lam: float = 0.0, cut_penalty: list[float] | None = None
              ) -> list[tuple[int, int]]:
    """Optimal contiguous partition of len(t_c) vertices into k stages: [(start, end), ...]."""
    n = len(t_c)
    if not 1 <= k <= n:
        raise ValueError(f"cannot cut {n} vertices into {k} stages")
    w = [t + s / bandwidth for t, s in zip(t_c, s_p)]
    prefix_w = [0.0]
    prefix_m = [0.0]
    for i in range(n):
        prefix_w.append(prefix_w[-1] + w[i])
        prefix_m.append(prefix_m[-1] + s_p[i])
    c = target if target is not None else prefix_w[-1] / k
    pen = cut_penalty or [0.0] * n

    def stage_cost(i: int, j: int) -> float:  # vertices i..j-1
        if prefix_m[j] - prefix_m[i] > mem_limit * (1 + 1e-12):  # prefix differences round: 14 + x - 14 > x
            return math.inf
        r = pen[j - 1] if j < n else 0.0
        return abs(prefix_w[j] - prefix_w[i] - c) + lam * r

    inf = math.inf
    best = [[inf] * (n + 1) for _ in range(k + 1)]
    back = [[-1] * (n + 1) for _ in range(k + 1)]
    best[0][0] = 0.0
    for stages in range(1, k + 1):
        for j in range(stages, n - (k - stages) + 1):
            for i in range(stages - 1, j):
                if best[stages - 1][i] == inf:
                    continue
                v = best[stages - 1][i] + stage_cost(i, j)
                if v < best[stages][j]:
                    best[stages][j], back[stages][j] = v, i
    if best[k][n] == inf:
        raise ValueError(f"no partition into {k} stages fits {mem_limit / 2**30:.1f} GiB per stage")
    cuts, j = [], n
    for stages in range(k, 0, -1):
        i = back[stages][j]
        cuts.append((i, j))
        j = i
    return cuts[::-1]


def objective(t_c: list[float], s_p: list[float], cuts: list[tuple[int, int]], bandwidth: float,
              target: float | None = None, lam: float = 0.0, cut_penalty: list[float] | None = None) -> float:
    w = [t + s / bandwidth for t, s in zip(t_c, s_p)]
    c = target if target is not None else sum(w) / len(cuts)
    pen = cut_penalty or [0.0] * len(t_c)
    return sum(abs(sum(w[i:j]) - c) + (lam * pen[j - 1] if j < len(t_c) else 0.0) for i, j in cuts)


def merge(finest: list[tuple[int, int]], t_c: list[float], s_p: list[float], k: int, bandwidth: float,
          mem_limit: float) -> list[tuple[int, int]]:
    """A coarser granularity: k groups of adjacent finest stages, balanced by the same DP."""
    tc = [sum(t_c[a:b]) for a, b in finest]
    sp = [sum(s_p[a:b]) for a, b in finest]
    groups = partition(tc, sp, k, bandwidth, mem_limit)
    return [(finest[i][0], finest[j - 1][1]) for i, j in groups]


def rebalance(t_c: list[float], s_p: list[float], speeds: list[float], bandwidth: float, *,
              mem: list[float] | None = None, limits: list[float] | None = None) -> list[tuple[int, int]]:
    """Eq. 2 re-run for GPUs of unequal speed: stage k's compute costs t_c x speeds[k] (its GPU's
    slowdown), so a slow GPU gets fewer layers. C is the balanced share sum(w) / sum(1/speed).
    `mem[i]`: bytes vertex i needs on its GPU (weights and its KV), `limits[k]`: what stage k's GPU
    has for them. Minimises sum_k |t_c(S_k) x speed_k + s_p(S_k)/B - C| like `partition`."""
    n, k = len(t_c), len(speeds)
    if not 1 <= k <= n:
        raise ValueError(f"cannot cut {n} vertices into {k} stages")
    mem = mem or [0.0] * n
    limits = limits or [math.inf] * k
    pc, pp, pm = [0.0], [0.0], [0.0]
    for i in range(n):
        pc.append(pc[-1] + t_c[i])
        pp.append(pp[-1] + s_p[i] / bandwidth)
        pm.append(pm[-1] + mem[i])
    c = pc[-1] / sum(1 / v for v in speeds) + pp[-1] / k  # every stage's compute equal, loads shared

    def cost(stage: int, i: int, j: int) -> float:
        if pm[j] - pm[i] > limits[stage] * (1 + 1e-12):
            return math.inf
        return abs((pc[j] - pc[i]) * speeds[stage] + pp[j] - pp[i] - c)

    inf = math.inf
    best = [[inf] * (n + 1) for _ in range(k + 1)]
    back = [[-1] * (n + 1) for _ in range(k + 1)]
    best[0][0] = 0.0
    for s in range(1, k + 1):
        for j in range(s, n - (k - s) + 1):
            for i in range(s - 1, j):
                if best[s - 1][i] < inf and (v := best[s - 1][i] + cost(s - 1, i, j)) < best[s][j]:
                    best[s][j], back[s][j] = v, i
    if best[k][n] == inf:
        raise ValueError("no partition fits the GPUs' memory")
    cuts, j = [], n
    for s in range(k, 0, -1):
        i = back[s][j]
        cuts.append((i, j))
        j = i
    return cuts[::-1]


def stage_times(t_c: list[float], cuts: list[tuple[int, int]], speeds: list[float]) -> list[float]:
    return [sum(t_c[a:b]) * v for (a, b), v in zip(cuts, speeds)]


def hetero_partition(t: list[list[float]], s_p: list[float], bandwidths: list[float], limits: list[float],
                     mem: list[float] | None = None, *, mode: str = "eq2", target: float | None = None
                     ) -> list[tuple[int, int]]:
    """Eq. 2 for a pipeline whose stages sit on GPUs of different kinds (issue 15).

    Stage k runs on GPU k (in pipeline order). `t[k][i]`: layer i's compute time on GPU k (from the
    cost model of that GPU kind, so an L40S's lower HBM bandwidth shows in decode and its tensor
    throughput in prefill); `s_p[i]/bandwidths[k]`: layer i's parameter load time over GPU k's link
    (Eq. 2's s_p/B, per GPU since a PCIe-only L40S server and an NVLink A100 server differ);
    `mem[i]`: bytes layer i needs on its GPU (weights + its KV; defaults to s_p), `limits[k]`:
    what GPU k has for them (the s_p(S_k) <= M_GPU constraint, per GPU: 48 GB for an L40S).

    mode "eq2": minimise sum_k |T_k - C| (the paper's objective), T_k = sum_{i in S_k}
    (t[k][i] + s_p[i]/B_k), with C the balanced share: the common stage time if layers could be
    split fractionally, C = n / sum_k (1 / tau_k), tau_k the mean per-layer T on GPU k. For equal
    GPUs this is `partition`'s C = sum(w) / K.
    mode "bottleneck": minimise max_k T_k (pipeline throughput is set by the slowest stage), ties
    broken by Eq. 2's sum (a second DP under the least bottleneck). Exact by DP over (stage, last
    layer) in O(K n^2).
    """
    k, n = len(t), len(s_p)
    if not 1 <= k <= n:
        raise ValueError(f"cannot cut {n} layers into {k} stages")
    if len(bandwidths) != k or len(limits) != k or any(len(row) != n for row in t):
        raise ValueError("t, bandwidths and limits need one entry per stage (t rows: one time per layer)")
    if mode not in ("eq2", "bottleneck"):
        raise ValueError(f"mode must be eq2 or bottleneck, got {mode!r}")
    mem = mem if mem is not None else list(s_p)
    pw = []  # pw[s][j]: prefix of stage s's per-layer time
    for s in range(k):
        row = [0.0]
        for i in range(n):
            row.append(row[-1] + t[s][i] + s_p[i] / bandwidths[s])
        pw.append(row)
    pm = [0.0]
    for i in range(n):
        pm.append(pm[-1] + mem[i])
    c = target if target is not None else n / sum(n / pw[s][n] for s in range(k))
    inf = math.inf

    def dp(combine, cap: float) -> tuple[float, list[tuple[int, int]]]:
        """Best combine-objective over cuts whose stages fit memory and take at most `cap`."""
        best = [[inf] * (n + 1) for _ in range(k + 1)]
        back = [[-1] * (n + 1) for _ in range(k + 1)]
        best[0][0] = 0.0
        for s in range(1, k + 1):
            for j in range(s, n - (k - s) + 1):
                for i in range(s - 1, j):
                    if best[s - 1][i] == inf or pm[j] - pm[i] > limits[s - 1] * (1 + 1e-12):
                        continue
                    ts = pw[s - 1][j] - pw[s - 1][i]
                    if ts > cap:
                        continue
                    v = combine(best[s - 1][i], ts)
                    if v < best[s][j]:
                        best[s][j], back[s][j] = v, i
        if best[k][n] == inf:
            return inf, []
        cuts, j = [], n
        for s in range(k, 0, -1):
            i = back[s][j]
            cuts.append((i, j))
            j = i
        return best[k][n], cuts[::-1]

    eq2 = lambda acc, ts: acc + abs(ts - c)  # noqa: E731
    if mode == "bottleneck":  # lexicographic (max, sum) is not a DP objective: the least max first
        worst, _ = dp(max, inf)
        if worst == inf:
            raise ValueError("no partition fits the GPUs' memory")
        _, cuts = dp(eq2, worst * (1 + 1e-12))
    else:
        _, cuts = dp(eq2, inf)
    if not cuts:
        raise ValueError("no partition fits the GPUs' memory")
    return cuts


def hetero_stage_times(t: list[list[float]], s_p: list[float], bandwidths: list[float],
                       cuts: list[tuple[int, int]]) -> list[float]:
    """T_k of `hetero_partition` for given cuts (stage k on GPU k)."""
    return [sum(t[k][i] + s_p[i] / bandwidths[k] for i in range(a, b)) for k, (a, b) in enumerate(cuts)]
