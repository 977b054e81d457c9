"""The scenarios (A-G, K, L), run against our stack and, where it makes sense, against the peer.

Each scenario measures and stores its figures in `Bench.results`; bench.targets turns them into
the table's rows.
"""

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import load, procs, seed, waiters
from bench.load import LoadResult, Request
from bench.peer import MASTER_KEY, LiteLLM
from bench.stack import CREDITS_PER_USER, Account, Stack, stop_group
from tests.fakes.processes import free_port, wait_until_answering

PROMPT = "A cinematic product photo of a transparent perfume bottle on black marble"
BODY = {"model": "gpt-image-2", "prompt": PROMPT, "size": "1024x1024", "quality": "high", "n": 1}
# What the openai SDK sends upstream for BODY (app/providers/openai.py adds output_format).
UPSTREAM_BODY = {**BODY, "output_format": "png"}
JSON = "application/json"
GEN_PATH = "/api/v1/images/generations"


@dataclass(frozen=True)
class Plan:
    """Sizes of every scenario; `quick()` shrinks them all for a smoke run."""

    users: int = 50
    warmup_s: float = 2.0
    a_s: float = 10.0
    b_s: float = 10.0
    c_s: float = 8.0
    c_levels: tuple[int, ...] = (1, 5, 50)
    d_s: float = 6.0
    e_s: float = 4.0
    e_small: int = 1_000
    e_big: int = 1_000_000
    e_seed_users: int = 1_000
    e_measured_share: float = 0.2
    f_uploads: int = 16
    g_burst: int = 200
    g_covered: int = 100
    g_rounds: int = 5
    k_s: float = 6.0
    l_waiters: int = 5_000
    l_upstream_s: float = 60.0
    l_ramp_s: float = 30.0  # the waiters are sent over this long (slower if the API lags)
    l_ramp_max_s: float = 90.0  # and no longer than this
    l_count_statements: bool = True  # the API's PostgreSQL traffic through a counting relay

    @classmethod
    def quick(cls) -> "Plan":
        return cls(users=10, warmup_s=0.5, a_s=2, b_s=2, c_s=2, d_s=1.5, e_s=1.0,
                   e_big=20_000, e_seed_users=50, f_uploads=4, g_rounds=1, k_s=1.5,
                   l_waiters=200, l_upstream_s=10, l_ramp_s=3, l_ramp_max_s=30)


@dataclass
class Target:
    """Where a load is sent: host, port and the Host header."""

    host: str
    port: int

    @property
    def hostport(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def of(cls, base: str) -> "Target":
        host, port = base.removeprefix("http://").rstrip("/").split(":")
        return cls(host, int(port))


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def post_json(target: Target, path: str, key: str, body: dict) -> Request:
    return load.build("POST", target.hostport, path, {**auth(key), "Content-Type": JSON},
                      json.dumps(body).encode())


def get(target: Target, path: str, key: str | None = None) -> Request:
    return load.build("GET", target.hostport, path, auth(key) if key else {})


def cycle(requests: list[Request]):
    return lambda i: requests[i % len(requests)]


def label(tree: procs.Tree, pid: int, n: int) -> str:
    cmd = procs.command(pid)
    if "resource_tracker" in cmd:
        return f"{tree.name} resource tracker"
    if pid == tree.root:
        return f"{tree.name} parent" if tree.name != "worker" else "worker"
    return f"{tree.name} child {n}"


def memory_by_process(trees: list[procs.Tree]) -> dict[str, dict[str, int]]:
    """{label: {"pid", "rss_mb", "pss_mb"}} for every process of the trees."""
    out = {}
    for tree in trees:
        children = 0
        for pid in tree.pids():
            mem = procs.memory_kb(pid)
            if not mem:
                continue
            name = label(tree, pid, children + 1)
            children += name.startswith(f"{tree.name} child")
            out[name] = {"pid": pid, "rss_mb": round(mem["rss"] / 1024, 1),
                         "pss_mb": round(mem["pss"] / 1024, 1)}
    return out


def total_pss_mb(memory: dict[str, dict[str, Any]]) -> float:
    return round(sum(m["pss_mb"] for m in memory.values()), 1)


@dataclass
class Bench:
    stack: Stack
    plan: Plan
    results: dict[str, Any] = field(default_factory=dict)
    accounts: list[Account] = field(default_factory=list)
    generation_ids: dict[str, str] = field(default_factory=dict)  # key -> one of its gens

    @property
    def ours(self) -> Target:
        return Target.of(self.stack.base)

    @property
    def upstream(self) -> Target:
        assert self.stack.fake is not None
        return Target.of(self.stack.fake.url)

    def upstream_switches(self, **switches: Any) -> None:
        """Set the fake's behaviour (and forget the requests it recorded, to bound its memory)."""
        assert self.stack.fake is not None
        self.stack.fake.reset()
        self.stack.fake.configure(**switches)

    def keep(self, key: str, result: LoadResult) -> LoadResult:
        self.results[key] = result.summary()
        return result

    def posts(self, *, is_async: bool) -> list[Request]:
        body = {**BODY, "async": True} if is_async else BODY
        return [post_json(self.ours, GEN_PATH, a.key, body) for a in self.accounts]

    def remember_ids(self, i: int, status: int, body: bytes) -> None:
        key = self.accounts[i % len(self.accounts)].key
        if key not in self.generation_ids:
            self.generation_ids[key] = json.loads(body)["id"]

    async def drain(self, what: str) -> dict[str, float]:
        count, seconds = await self.stack.drain()
        if count:
            print(f"    worker finished {count} queued generations after {what} in "
                  f"{seconds:.1f} s ({count / seconds:.0f}/s)")
        return {"generations": count, "seconds": round(seconds, 2)}


# --- set-up and idle memory -------------------------------------------------------------------

async def prepare(b: Bench) -> None:
    began = time.monotonic()
    b.accounts = await b.stack.accounts(b.plan.users)
    print(f"  {len(b.accounts)} users with keys and {CREDITS_PER_USER:,} credits each in "
          f"{time.monotonic() - began:.1f} s")
    b.upstream_switches()
    # Warm both API processes and the worker (imports, pools, statement caches).
    await load.run("warm-up", b.ours.host, b.ours.port, cycle(b.posts(is_async=False)),
                   expected={200}, concurrency=4, total=max(8, len(b.accounts)),
                   on_response=b.remember_ids, quiet=True)
    await asyncio.sleep(1)
    b.results["idle_memory"] = memory_by_process(b.stack.trees)
    print(f"    idle PSS of our processes: {total_pss_mb(b.results['idle_memory'])} MB "
          + str({k: v["pss_mb"] for k, v in b.results["idle_memory"].items()}))


# --- A: async submit throughput ---------------------------------------------------------------

async def scenario_a(b: Bench) -> None:
    b.upstream_switches()
    b.keep("A", await measured(
        b, "A", b.stack.trees, b.ours, cycle(b.posts(is_async=True)), {202}, concurrency=50,
        duration_s=b.plan.a_s))
    b.results["A_drain"] = await b.drain("A")


# --- B: end-to-end sync throughput; CPU per generation; PSS under load ------------------------

async def measured(b: Bench, key: str, trees: list[procs.Tree], target: Target,
                   make: Any, expected: set[int], **kw: Any) -> LoadResult:
    """A load with the CPU time (per process tree) and the peak total PSS of `trees` over it;
    the warm-up is not counted."""
    await load.run(f"{key} warm-up", target.host, target.port, make, expected=expected,
                   concurrency=kw["concurrency"], duration_s=b.plan.warmup_s, quiet=True)
    around = b.stack.infra()  # for the breakdown only: not counted as ours (or the peer's)
    cpu0 = {t.name: t.cpu() for t in trees + around}
    async with procs.PeakSampler(trees, interval=0.5) as sampler:
        result = await load.run(key, target.host, target.port, make, expected=expected, **kw)
    cpu = {t.name: round(t.cpu() - cpu0[t.name], 2) for t in trees}
    total = sum(cpu.values())
    others = {t.name: round(t.cpu() - cpu0[t.name], 2) for t in around}
    others["load generator"] = round(result.loadgen_cpu_s, 2)
    b.results[f"{key}_cpu"] = {
        "cpu_s": round(total, 2), "cpu_s_by_tree": cpu, "cpu_s_around": others,
        "requests": result.ok,
        "cpu_ms_per_request": round(1000 * total / result.ok, 2) if result.ok else None,
        "cores_busy": round(total / result.elapsed_s, 2) if result.elapsed_s else None,
        "pss_peak_total_mb": round(sampler.total_pss_peak / 1024, 1)}
    print(f"    CPU of {'+'.join(cpu)}: {b.results[f'{key}_cpu']}")
    return result


async def scenario_b(b: Bench) -> None:
    b.upstream_switches(image_kb=200)
    b.keep("B", await measured(
        b, "B", b.stack.trees, b.ours, cycle(b.posts(is_async=False)), {200}, concurrency=50,
        duration_s=b.plan.b_s, on_response=b.remember_ids))


# --- C: overhead over a 200 ms upstream -------------------------------------------------------

async def scenario_c(b: Bench) -> None:
    b.upstream_switches(latency_ms=200, image_kb=200)
    direct = [post_json(b.upstream, "/v1/images/generations", "sk-bench", UPSTREAM_BODY)]
    for c in b.plan.c_levels:
        warm = min(b.plan.warmup_s, 1.0)
        b.keep(f"C_direct_{c}", await load.run(
            f"C direct to the fake upstream, c={c}", b.upstream.host, b.upstream.port,
            cycle(direct), expected={200}, concurrency=c, duration_s=b.plan.c_s, warmup_s=warm))
        b.keep(f"C_ours_{c}", await load.run(
            f"C ours, sync, c={c}", b.ours.host, b.ours.port, cycle(b.posts(is_async=False)),
            expected={200}, concurrency=c, duration_s=b.plan.c_s, warmup_s=warm))


# --- D: read paths ----------------------------------------------------------------------------

async def scenario_d(b: Bench) -> None:
    b.upstream_switches()
    missing = [a for a in b.accounts if a.key not in b.generation_ids]
    if missing:  # one generation per user to read back
        await load.run("D set-up", b.ours.host, b.ours.port, cycle(b.posts(is_async=False)),
                       expected={200}, concurrency=5, total=len(b.accounts),
                       on_response=b.remember_ids, quiet=True)
    reads = {
        "models": [get(b.ours, "/api/v1/models")],
        "credits": [get(b.ours, "/api/v1/credits", a.key) for a in b.accounts],
        "generation": [get(b.ours, f"/api/v1/generations/{b.generation_ids[a.key]}", a.key)
                       for a in b.accounts],
    }
    for name, requests in reads.items():
        b.keep(f"D_{name}", await load.run(
            f"D ours: GET {name}", b.ours.host, b.ours.port, cycle(requests), expected={200},
            concurrency=50, duration_s=b.plan.d_s, warmup_s=min(b.plan.warmup_s, 1.0)))


# --- E: growth, 1k vs 1M rows -----------------------------------------------------------------

async def growth_phase(b: Bench, phase: str, account: Account, generation_id: str) -> None:
    paths = {
        "credits": [get(b.ours, "/api/v1/credits", account.key)],
        "generation": [get(b.ours, f"/api/v1/generations/{generation_id}", account.key)],
        "post": [post_json(b.ours, GEN_PATH, account.key, {**BODY, "async": True})],
    }
    for name, requests in paths.items():
        expected = {202} if name == "post" else {200}
        b.keep(f"E_{name}_{phase}", await load.run(
            f"E {phase}: {name}", b.ours.host, b.ours.port, cycle(requests), expected=expected,
            concurrency=1, duration_s=b.plan.e_s, warmup_s=min(b.plan.warmup_s, 1.0)))
    await b.drain(f"E {phase}")


async def scenario_e(b: Bench) -> None:
    b.upstream_switches()
    stack, plan = b.stack, b.plan
    account = (await stack.accounts(1, prefix="growth"))[0]
    first: list[str] = []
    await load.run("E set-up", b.ours.host, b.ours.port,
                   cycle([post_json(b.ours, GEN_PATH, account.key, BODY)]), expected={200},
                   concurrency=1, total=1, on_response=lambda i, s, body: first.append(
                       json.loads(body)["id"]), quiet=True)
    took = await seed.seed(stack.db_url, "1k", account.user_id, plan.e_small)
    rows = await seed.counts(stack.db_url, account.user_id)
    b.results["E_rows_1k"] = {**rows, "seed_s": round(took, 1)}
    print(f"    seeded {plan.e_small} generations for the measured user in {took:.1f} s: {rows}")
    await growth_phase(b, "1k", account, first[0])

    share = int(plan.e_big * plan.e_measured_share)
    print(f"    seeding {plan.e_big:,} generations and charges ({share:,} for the measured "
          f"user, the rest over {plan.e_seed_users:,} users) ...", flush=True)
    took = await seed.seed(stack.db_url, "1m", account.user_id, share, plan.e_seed_users,
                           plan.e_big - share)
    rows = await seed.counts(stack.db_url, account.user_id)
    b.results["E_rows_1M"] = {**rows, "seed_s": round(took, 1)}
    print(f"    seeded in {took:.1f} s: {rows}")
    await growth_phase(b, "1M", account, first[0])
    began = time.monotonic()
    audit = stack.gih("credits", "audit", check=False)
    b.results["E_audit"] = {"exit": audit.returncode, "seconds": round(time.monotonic() - began,
                                                                       1),
                            "output": (audit.stdout + audit.stderr)[-500:]}
    print(f"    gih credits audit over the seeded database: exit {audit.returncode} in "
          f"{b.results['E_audit']['seconds']} s")


# --- F: memory during 50 MB uploads -----------------------------------------------------------

def reference_png(folder: Path) -> Path:
    """A real, decodable PNG of about 49.5 MB (noise does not compress), built once."""
    from PIL import Image

    path = folder / "reference-49mb.png"
    if not path.exists():
        Image.frombytes("RGB", (4180, 4140), os.urandom(4180 * 4140 * 3)).save(
            path, "PNG", compress_level=0)
    return path


async def scenario_f(b: Bench) -> None:
    b.upstream_switches()
    png = await asyncio.to_thread(reference_png, b.stack.dir)
    n = b.plan.f_uploads
    uploads = [load.multipart(b.ours.hostport, GEN_PATH, auth(a.key),
                              {"model": "gpt-image-2", "prompt": PROMPT, "async": "true"},
                              "reference_image", png, "image/png") for a in b.accounts]
    trees = b.stack.trees
    for tree in trees:
        for pid in tree.pids():
            procs.reset_peak(pid)
    began = time.monotonic()
    async with procs.PeakSampler(trees, interval=0.1) as sampler:
        result = b.keep("F_uploads", await load.run(
            f"F ours: {n} concurrent uploads of {png.stat().st_size / 2**20:.1f} MB",
            b.ours.host, b.ours.port, cycle(uploads), expected={202}, concurrency=n, total=n))
        during_uploads = {name: dict(peak) for name, peak in sampler.peaks.items()}
        drained = await b.drain("F")
    peaks = {}
    for tree in trees:
        children = 0
        for pid in tree.pids():
            name = label(tree, pid, children + 1)
            children += name.startswith(f"{tree.name} child")
            sampled = sampler.peaks.get(f"{tree.name}:{pid}", {})
            upload_peak = during_uploads.get(f"{tree.name}:{pid}", {})
            peaks[name] = {"pid": pid, "peak_rss_mb": round(procs.peak_rss_kb(pid) / 1024, 1),
                           "peak_pss_mb_sampled": round(sampled.get("pss", 0) / 1024, 1),
                           "peak_pss_mb_during_uploads": round(upload_peak.get("pss", 0) / 1024,
                                                               1)}
    b.results["F_peaks"] = peaks
    b.results["F_timing"] = {"uploads_s": round(result.elapsed_s, 1), "worker": drained,
                             "total_s": round(time.monotonic() - began, 1),
                             "total_pss_peak_mb": round(sampler.total_pss_peak / 1024, 1)}
    print(f"    peaks: { {k: v['peak_rss_mb'] for k, v in peaks.items()} } MB RSS")


# --- G: hot account ---------------------------------------------------------------------------

async def scenario_g(b: Bench) -> None:
    b.upstream_switches()
    plan = b.plan
    account = (await b.stack.accounts(1, credits=0, prefix="hot"))[0]
    request = [post_json(b.ours, GEN_PATH, account.key, {**BODY, "async": True})]
    statuses: Counter = Counter()
    elapsed, latencies, errors = 0.0, [], 0
    for r in range(plan.g_rounds):
        await b.stack.grant(account, plan.g_covered * 8)
        result = b.keep(f"G_round_{r + 1}", await load.run(
            f"G round {r + 1}: {plan.g_burst} concurrent on one user, {plan.g_covered} covered",
            b.ours.host, b.ours.port, cycle(request), expected={202, 402},
            concurrency=plan.g_burst, total=plan.g_burst))
        statuses.update(result.statuses)
        elapsed += result.elapsed_s
        latencies += result.latencies_ms
        errors += result.errors
    rows = await b.stack.sql("SELECT credits FROM users WHERE id = $1", account.user_id)
    await b.drain("G")
    audit = b.stack.gih("credits", "audit", check=False)
    done = sum(statuses.values())
    latencies.sort()
    b.results["G"] = {
        "requests": done, "accepted_202": statuses[202], "refused_402": statuses[402],
        "expected_202": plan.g_covered * plan.g_rounds, "errors": errors,
        "elapsed_s": round(elapsed, 3), "rate_per_s": round(done / elapsed, 1) if elapsed else 0,
        "p50_ms": load.percentile(latencies, 50), "p99_ms": load.percentile(latencies, 99),
        "final_balance": rows[0]["credits"], "audit_exit": audit.returncode,
        "audit_output": (audit.stdout + audit.stderr)[-500:]}
    print(f"    G: {b.results['G']}")


# --- K: the bare-app ceiling ------------------------------------------------------------------

async def scenario_k(b: Bench) -> None:
    """bench/ceiling.py (raw ASGI + asyncpg + redis, one uvicorn process) at c=50: the balance
    read, the submit, and the submit as one SQL statement, with the bench's users and keys."""
    stack, secret = b.stack, secrets.token_hex(16)
    port = free_port()
    log = stack.dir / "ceiling.log"
    env = {**os.environ, "CEILING_DATABASE_URL": stack.db_url,
           "CEILING_REDIS_URL": stack.env["GIH_REDIS_URL"], "CEILING_SECRET": secret}
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "bench.ceiling:app", "--host", "127.0.0.1",
             "--port", str(port), "--no-access-log", "--http", "httptools", "--loop", "uvloop",
             "--log-level", "warning", "--backlog", "2048"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    stack.on_close(lambda: stop_group(process))
    try:
        await asyncio.to_thread(wait_until_answering, process,
                                f"http://127.0.0.1:{port}/healthz", log)
        from bench.ceiling import key_hash
        ids = [f"cu_{i}" for i in range(len(b.accounts))]
        await stack.sql("INSERT INTO ceiling_users (id, credits) SELECT unnest($1::text[]), $2",
                        ids, CREDITS_PER_USER)
        await stack.sql("INSERT INTO ceiling_keys (hash, user_id) "
                        "SELECT unnest($1::text[]), unnest($2::text[])",
                        [key_hash(a.key.encode(), secret.encode()) for a in b.accounts], ids)
        target, tree = Target("127.0.0.1", port), procs.Tree("ceiling", process.pid)
        loads = {"balance": ([get(target, "/balance", a.key) for a in b.accounts], {200}),
                 "submit": ([post_json(target, "/submit", a.key, BODY) for a in b.accounts],
                            {202}),
                 "submit_one": ([post_json(target, "/submit-one", a.key, BODY)
                                 for a in b.accounts], {202})}
        for name, (requests, expected) in loads.items():
            b.keep(f"K_{name}", await measured(b, f"K_{name}", [tree], target, cycle(requests),
                                               expected, concurrency=50, duration_s=b.plan.k_s))
        b.results["K_memory"] = memory_by_process([tree])
    finally:
        await asyncio.to_thread(stop_group, process)


# --- L: thousands of sync requests waiting in one API process --------------------------------

async def scenario_l(b: Bench) -> None:
    """bench/waiters.py: `l_waiters` sync POSTs held by one `gih serve` process while the
    upstream takes `l_upstream_s`; answer lag, memory per waiter, SQL per waiter."""
    plan = b.plan
    n = plan.l_waiters
    limits = waiters.raise_fd_limit(2 * n + 2000)
    accounts = await b.stack.accounts(min(50, n), prefix="waiter")
    run = waiters.Waiters(b.stack, accounts, n, plan.l_upstream_s, plan.l_ramp_s,
                          plan.l_ramp_max_s, BODY, GEN_PATH, plan.l_count_statements)
    try:
        target = Target.of(await run.start())
        requests = [post_json(target, GEN_PATH, a.key, BODY) for a in accounts]
        b.upstream_switches()
        await load.run("L warm-up", target.host, target.port, cycle(requests), expected={200},
                       concurrency=4, total=max(20, len(accounts)), quiet=True)
        await asyncio.sleep(1)
        b.upstream_switches(latency_ms=int(plan.l_upstream_s * 1000))
        print(f"    {n} sync requests over ~{plan.l_ramp_s:.0f} s (not yet charged at most "
              f"{waiters.WINDOW_S:g} s of charging or {waiters.WINDOW_MIN}), upstream "
              f"{plan.l_upstream_s:.0f} s; open files limit {limits[0]}", flush=True)
        result = await run.run((target.host, target.port), requests)
    finally:
        await run.stop()
        b.upstream_switches()
    result["open_files_limit"] = limits[0]
    b.results["L"] = result
    shown = {k: v for k, v in result.items() if k != "samples"}
    print(f"    L: {shown}")


# --- the peer ---------------------------------------------------------------------------------

async def peer_scenarios(b: Bench, peer: LiteLLM, selected: set[str]) -> None:
    target = Target.of(peer.base)
    body = [post_json(target, "/v1/images/generations", MASTER_KEY, BODY)]
    models = [get(target, "/v1/models", MASTER_KEY)]
    b.upstream_switches()
    await load.run("peer warm-up", target.host, target.port, cycle(body), expected={200},
                   concurrency=4, total=40, quiet=True)
    await asyncio.sleep(1)
    b.results["peer_idle_memory"] = memory_by_process([peer.tree])
    print(f"    idle PSS of litellm: {total_pss_mb(b.results['peer_idle_memory'])} MB "
          + str({k: v["pss_mb"] for k, v in b.results["peer_idle_memory"].items()}))
    if "A" in selected:
        b.upstream_switches()
        b.keep("peer_A", await measured(b, "peer_A", [peer.tree], target, cycle(body), {200},
                                        concurrency=50, duration_s=b.plan.a_s))
    if selected & {"B", "F"}:
        b.upstream_switches(image_kb=200)
        b.keep("peer_B", await measured(b, "peer_B", [peer.tree], target, cycle(body), {200},
                                        concurrency=50, duration_s=b.plan.b_s))
    if "C" in selected:
        b.upstream_switches(latency_ms=200, image_kb=200)
        for c in b.plan.c_levels:
            b.keep(f"C_peer_{c}", await load.run(
                f"C peer, c={c}", target.host, target.port, cycle(body), expected={200},
                concurrency=c, duration_s=b.plan.c_s, warmup_s=min(b.plan.warmup_s, 1.0)))
    if "D" in selected:
        b.upstream_switches()
        b.keep("peer_D_models", await load.run(
            "D peer: GET /v1/models", target.host, target.port, cycle(models), expected={200},
            concurrency=50, duration_s=b.plan.d_s, warmup_s=min(b.plan.warmup_s, 1.0)))


SCENARIOS = {"A": scenario_a, "B": scenario_b, "C": scenario_c, "D": scenario_d,
             "F": scenario_f, "G": scenario_g, "E": scenario_e, "K": scenario_k,
             "L": scenario_l}
