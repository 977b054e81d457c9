"""The table's rows, with issue 6's targets, from the figures the scenarios stored."""

from typing import Any

from bench.report import Report, ratio

API_PROCESS_LIMIT_MB = 200


def _get(results: dict[str, Any], key: str, field: str) -> float | None:
    return (results.get(key) or {}).get(field)


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def build(r: dict[str, Any], report: Report, c_levels: tuple[int, ...]) -> None:
    has_peer = any(k.startswith("peer") for k in r)

    def peer_ratio(target: str, test: Any) -> dict[str, Any]:
        return {"target": target, "check": test} if has_peer else {"target": target}

    if "A" in r:
        report.add("A", "async submit req/s, c=50", _get(r, "A", "rate_per_s"),
                   _get(r, "peer_A", "rate_per_s"),
                   **peer_ratio(">= 3x peer (0 ms)", lambda row: row.ratio >= 3))
        for q in ("p50", "p99"):
            report.add("A", f"{q} ms", _get(r, "A", f"{q}_ms"), _get(r, "peer_A", f"{q}_ms"))
        api_cpu = (_get(r, "A_cpu", "cpu_s_by_tree") or {}).get("api")
        accepted = _get(r, "A", "ok")
        report.add("A", "CPU ms per request (ours: API processes)",
                   1000 * api_cpu / accepted if api_cpu is not None and accepted else None,
                   _get(r, "peer_A_cpu", "cpu_ms_per_request"))
        drain = r.get("A_drain") or {}
        if drain.get("generations"):
            report.add("A", "worker drain after A, gen/s",
                       drain["generations"] / drain["seconds"])

    if "B" in r:
        report.add("B", "completed gen/s, sync, 200 KB, c=50", _get(r, "B", "rate_per_s"),
                   _get(r, "peer_B", "rate_per_s"),
                   **peer_ratio(">= 2x peer (0 ms)", lambda row: row.ratio >= 2))
        for q in ("p50", "p99"):
            report.add("B", f"{q} ms", _get(r, "B", f"{q}_ms"), _get(r, "peer_B", f"{q}_ms"))

    for c in c_levels:
        if f"C_ours_{c}" not in r:
            continue
        for q, limit in (("p50", 1 / 4), ("p99", 1 / 3)):
            direct = _get(r, f"C_direct_{c}", f"{q}_ms")
            ours = _minus(_get(r, f"C_ours_{c}", f"{q}_ms"), direct)
            peer = _minus(_get(r, f"C_peer_{c}", f"{q}_ms"), direct)
            extra = {}
            if c == 5:
                extra = peer_ratio(f"<= {'1/4' if q == 'p50' else '1/3'} peer",
                                   lambda row, limit=limit: row.ratio <= limit)
            report.add("C", f"overhead {q} ms, c={c} (upstream alone {direct:.0f})"
                       if direct is not None else f"overhead {q} ms, c={c}", ours, peer, **extra)

    for path, label in (("models", "GET /models"), ("credits", "GET /credits"),
                        ("generation", "GET /generations/{id}")):
        key = f"D_{path}"
        if key not in r:
            continue
        peer_key = "peer_D_models" if path == "models" else ""
        report.add("D", f"{label} req/s, c=50", _get(r, key, "rate_per_s"),
                   _get(r, peer_key, "rate_per_s"))
        for q in ("p50", "p99"):
            report.add("D", f"{label} {q} ms", _get(r, key, f"{q}_ms"),
                       _get(r, peer_key, f"{q}_ms"))

    if "E_rows_1M" in r:
        rows = r["E_rows_1M"]
        report.add("E", "ledger rows, all", rows["ledger"])
        report.add("E", "ledger rows, measured user", rows["user_ledger"])
        report.add("E", "generations, all", rows["generations"])
        report.add("E", "generations, measured user", rows["user_generations"])
    for path, label in (("credits", "GET /credits"), ("generation", "GET /generations/{id}"),
                        ("post", "POST async")):
        small, big = _get(r, f"E_{path}_1k", "p50_ms"), _get(r, f"E_{path}_1M", "p50_ms")
        if small is None and big is None:
            continue
        report.add("E", f"{label} p50 ms, 1k rows", small)
        report.add("E", f"{label} p50 ms, 1M rows", big)
        report.add("E", f"{label} p50 1M/1k", ratio_=ratio(big, small), target="<= 1.2",
                   check=lambda row: row.ratio <= 1.2)
    if "E_audit" in r:
        report.add("E", f"gih credits audit after seeding: exit ({r['E_audit']['seconds']} s)",
                   r["E_audit"]["exit"], target="= 0", check=lambda row: row.ours == 0)

    if "idle_memory" in r:
        ours = sum(m["pss_mb"] for m in r["idle_memory"].values())
        peer_mem = r.get("peer_idle_memory")
        peer = sum(m["pss_mb"] for m in peer_mem.values()) if peer_mem else None
        report.add("F", "idle PSS MB, all processes", ours, peer,
                   **peer_ratio("<= 1/3 peer", lambda row: row.ratio <= 1 / 3))
        for name, m in r["idle_memory"].items():
            report.add("F", f"idle PSS MB, {name}", m["pss_mb"])
    for name, m in (r.get("F_peaks") or {}).items():
        is_api = name.startswith("api") and "tracker" not in name
        report.add("F", f"peak RSS MB in uploads, {name}", m["peak_rss_mb"],
                   target=f"< {API_PROCESS_LIMIT_MB}" if is_api else "",
                   check=(lambda row: row.ours < API_PROCESS_LIMIT_MB) if is_api else None)
    if "F_timing" in r:
        report.add("F", "peak PSS MB, uploads and their jobs, all",
                   r["F_timing"]["total_pss_peak_mb"])
    if "B_cpu" in r or "peer_B_cpu" in r:
        report.add("F", "peak PSS MB under load (B), all", _get(r, "B_cpu", "pss_peak_total_mb"),
                   _get(r, "peer_B_cpu", "pss_peak_total_mb"))
        report.add("F", "CPU ms per generation (B)", _get(r, "B_cpu", "cpu_ms_per_request"),
                   _get(r, "peer_B_cpu", "cpu_ms_per_request"),
                   **peer_ratio("<= 1/2 peer", lambda row: row.ratio <= 1 / 2))

    if "G" in r:
        g = r["G"]
        report.add("G", f"202 accepted of {g['requests']}", g["accepted_202"],
                   target=f"= {g['expected_202']}",
                   check=lambda row: row.ours == g["expected_202"])
        report.add("G", "402 refused", g["refused_402"])
        report.add("G", "final balance", g["final_balance"], target=">= 0",
                   check=lambda row: row.ours >= 0)
        report.add("G", "gih credits audit: exit", g["audit_exit"], target="= 0",
                   check=lambda row: row.ours == 0)
        a_rate = _get(r, "A", "rate_per_s")
        report.add("G", "req/s, 200 concurrent, one user (ratio: / A)", g["rate_per_s"],
                   ratio_=ratio(g["rate_per_s"], a_rate), target=">= 0.5x A",
                   check=lambda row: row.ratio >= 0.5)
        report.add("G", "p50 ms", g["p50_ms"])
        report.add("G", "p99 ms", g["p99_ms"])

    build_ceiling(r, report)
    build_waiters(r, report)


CEILING_SHARE = 0.4  # GET /api/v1/credits >= 40 % of the ceiling's balance read
LAG_S = 1.0
KB_PER_WAITER = 20
FALLBACK_SLACK = 1.1  # the API's reads per waiter-second may reach 1/RECHECK_S, +10 % timing


def recheck_s() -> float:
    try:
        from app.generations.waiting import RECHECK_S
    except ImportError:
        return 15.0
    return float(RECHECK_S)


def build_ceiling(r: dict[str, Any], report: Report) -> None:
    for key, label in (("K_balance", "ceiling GET balance req/s, c=50"),
                       ("K_submit", "ceiling submit req/s, c=50"),
                       ("K_submit_one", "ceiling submit as one SQL statement req/s, c=50")):
        if key in r:
            report.add("K", label, _get(r, key, "rate_per_s"))
            report.add("K", f"{label.split(' req/s')[0]} CPU ms per request (ceiling process)",
                       _get(r, f"{key}_cpu", "cpu_ms_per_request"))
    ours, ceiling = _get(r, "D_credits", "rate_per_s"), _get(r, "K_balance", "rate_per_s")
    if ours is not None and ceiling is not None:
        report.add("K", "GET /api/v1/credits req/s (D; ratio: / ceiling balance read)", ours,
                   ratio_=ratio(ours, ceiling), target=f">= {CEILING_SHARE:.0%} ceiling",
                   check=lambda row: row.ratio >= CEILING_SHARE)
    submit = _get(r, "A", "rate_per_s")
    if submit is not None and "K_submit" in r:
        report.add("K", "async submit req/s (A; ratio: / ceiling submit)", submit,
                   ratio_=ratio(submit, _get(r, "K_submit", "rate_per_s")))


def build_waiters(r: dict[str, Any], report: Report) -> None:
    w = r.get("L")
    if not w:
        return
    n = w["waiters"]
    report.add("L", f"errors of {n} sync requests (upstream {w['upstream_s']:.0f} s)",
               w["errors"], target="= 0", check=lambda row: row.ours == 0)
    report.add("L", "answered 200", w["answered_200"], target=f"= {n}",
               check=lambda row: row.ours == n)
    report.add("L", f"peak waiting at once in one API process ({w['workers']} workers)",
               w["peak_waiting"], target=f"= {n}", check=lambda row: row.ours == n)
    report.add("L", f"ramp s (aimed at {n / w['ramp_rate_target_per_s']:.0f})", w["ramp_s"])
    report.add("L", "answer lag s after completed_at, max", w["lag_s_max"],
               target=f"<= {LAG_S:g}", check=lambda row: row.ours <= LAG_S)
    report.add("L", "answer lag s, p50", w["lag_s_p50"])
    report.add("L", "answer lag s, p99", w["lag_s_p99"])
    report.add("L", "API RSS MB before", _mb(w.get("api_rss_kb_before")))
    report.add("L", "API RSS MB, all waiting", _mb(w.get("api_rss_kb_all_waiting")))
    report.add("L", "API RSS KB per waiting request", w.get("rss_kb_per_waiter"),
               target=f"<= {KB_PER_WAITER}", check=lambda row: row.ours <= KB_PER_WAITER)
    report.add("L", "API PSS KB per waiting request", w.get("pss_kb_per_waiter"),
               target=f"<= {KB_PER_WAITER}", check=lambda row: row.ours <= KB_PER_WAITER)
    quiet = w.get("quiet") or {}
    fallback = 1 / recheck_s()
    report.add("L", f"quiet window s ({quiet.get('waiting', 0)} waiting)", quiet.get("seconds"))
    # A window shorter than the fallback's period proves nothing (no re-read is due in it).
    judged = (quiet.get("seconds") or 0) >= recheck_s()
    report.add("L", "API SQL statements per waiter-second (ratio: / the 1/15 s fallback)"
               if recheck_s() == 15 else "API SQL statements per waiter-second (ratio: / "
               "the fallback)", quiet.get("api_statements_per_waiter_s"),
               ratio_=ratio(quiet.get("api_statements_per_waiter_s"), fallback),
               target=f"<= fallback (+{FALLBACK_SLACK - 1:.0%})" + (
                   "" if judged or not quiet else f", window < {recheck_s():g} s"),
               check=(lambda row: row.ratio <= FALLBACK_SLACK) if judged else None)
    report.add("L", "DB transactions per waiter-second, all processes (workers' heartbeats "
               "incl.)", quiet.get("db_transactions_per_waiter_s"),
               ratio_=ratio(quiet.get("db_transactions_per_waiter_s"), fallback))
    report.add("L", "API SQL statements per sync request (+ BEGIN/COMMIT/ROLLBACK)",
               w.get("api_statements_per_request"))
    probe = (w.get("probe_ms_get_models") or {}).get("answering") or {}
    report.add("L", "GET /models ms while answering (the API's loop), p99", probe.get("p99"))
    ramp = w.get("cpu_s_ramp") or {}
    if ramp.get("seconds"):
        workers = sum(v for k, v in ramp.items() if k.startswith("worker "))
        report.add("L", "cores busy during the ramp: API process", ramp.get("api", 0) /
                   ramp["seconds"])
        report.add("L", f"cores busy during the ramp: {w['workers']} workers (holding jobs)",
                   workers / ramp["seconds"])


def _mb(kb: float | None) -> float | None:
    return None if kb is None else kb / 1024
