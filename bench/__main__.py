"""`python -m bench` (`make bench ARGS=...`): the benchmark suite of issue 6.

Starts the production stack on 127.0.0.1 (bench.stack), runs the scenarios (bench.scenarios)
with a bounded load generator (bench.load), optionally the same against LiteLLM (bench.peer),
prints the table and writes JSON (bench.report). Everything is torn down at the end, also on
Ctrl-C or an error.
"""

import argparse
import asyncio
import dataclasses
import os
import signal
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ALL = "ABCDEFGKL"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shrink every scenario (smoke run)")
    parser.add_argument("--scenarios", default=",".join(ALL),
                        help="comma-separated subset of A,B,C,D,E,F,G,K,L (default: all)")
    parser.add_argument("--waiters", type=int, metavar="N",
                        help="L: concurrent sync requests (default 5000; 200 with --quick)")
    parser.add_argument("--waiter-upstream-s", type=float, metavar="S",
                        help="L: the upstream's latency (default 60; 10 with --quick)")
    parser.add_argument("--waiter-direct", action="store_true",
                        help="L: the API talks to PostgreSQL directly (no statement count)")
    parser.add_argument("--peer", choices=["litellm"], help="also measure this peer gateway")
    parser.add_argument("--litellm-spec", default="litellm[proxy]",
                        help="pip requirement for the peer (default: %(default)s)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for gih serve/worker (repeatable)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "last.json",
                        help="JSON results file (default: %(default)s)")
    args = parser.parse_args(argv)
    args.selected = {s.strip().upper() for s in args.scenarios.split(",") if s.strip()}
    unknown = args.selected - set(ALL)
    if unknown:
        parser.error(f"unknown scenarios: {sorted(unknown)}")
    try:
        args.extra_env = dict(e.split("=", 1) for e in args.env)
    except ValueError:
        parser.error("--env takes KEY=VALUE")
    return args


def loop_factory():
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def busy_percent(seconds: float = 1.0) -> float:
    """How busy all CPUs were over `seconds` (from /proc/stat), before we start anything."""
    def sample() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values), idle

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 100 * (1 - (idle1 - idle0) / max(1, total1 - total0))


def machine_line() -> str:
    load1, load5, _ = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {load1:.2f} (1 min) {load5:.2f} (5 min)"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    os.chdir(REPO)  # the fakes run as `python -m tests.fakes...` from the repository root
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from bench import peer as peer_mod
    from bench import scenarios, targets
    from bench.report import Report
    from bench.stack import Stack

    plan = scenarios.Plan.quick() if args.quick else scenarios.Plan()
    if args.waiters:
        plan = dataclasses.replace(plan, l_waiters=args.waiters)
    if args.waiter_direct:
        plan = dataclasses.replace(plan, l_count_statements=False)
    if args.waiter_upstream_s:
        plan = dataclasses.replace(plan, l_upstream_s=args.waiter_upstream_s)
    report = Report()
    report.details["args"] = {"quick": args.quick, "scenarios": sorted(args.selected),
                              "peer": args.peer, "env": args.extra_env}
    report.details["plan"] = plan.__dict__
    busy = busy_percent()
    report.details["cpu_busy_percent_before_start"] = round(busy, 1)
    print(f"bench: scenarios {','.join(sorted(args.selected))}"
          f"{' (quick)' if args.quick else ''}; machine: {machine_line()}, "
          f"{busy:.0f}% busy just before the start")
    if busy > 25:
        report.notes.append(f"the machine was {busy:.0f}% busy before the start "
                            f"({machine_line()}): figures are noisy")
        print("  ! the machine is busy: figures will be noisy")
    began = time.monotonic()
    version = None
    if args.peer == "litellm":
        try:
            version = peer_mod.install(args.litellm_spec)
            print(f"  peer: LiteLLM {version}")
            report.details["peer_version"] = f"litellm {version}"
        except Exception as exc:  # no peer figures, but carry on
            report.notes.append(f"litellm could not be installed: {exc}")
            print(f"  ! litellm could not be installed ({exc}); no peer figures")

    signal.signal(signal.SIGTERM, on_sigterm)
    bench = None
    try:
        with Stack(extra_env=args.extra_env, keep_logs=args.out.parent / "logs") as stack, \
                asyncio.Runner(loop_factory=loop_factory) as runner:
            bench = scenarios.Bench(stack, plan)
            runner.run(scenarios.prepare(bench))
            for name, scenario in scenarios.SCENARIOS.items():
                if name in args.selected:
                    run_step(runner, f"scenario {name}", scenario(bench), report)
            if version:
                litellm = peer_mod.LiteLLM(stack.dir / "litellm", stack.fake.base_url)
                stack.on_close(litellm.stop)
                try:
                    litellm.start()
                except Exception as exc:
                    report.notes.append(f"litellm did not start: {exc}"[:2000])
                    print(f"  ! litellm did not start; no peer figures:\n{exc}")
                else:
                    run_step(runner, "peer", scenarios.peer_scenarios(
                        bench, litellm, args.selected), report)
                    litellm.stop()
            errors = stack.log_errors()
            if errors:
                report.details["log_errors"] = errors
                for name, found in errors.items():
                    message, times = found["top"][0]
                    report.notes.append(f"{found['count']} warnings/errors in {name}; the most "
                                        f"frequent ({times}x): {message}")
            print("  tearing down ...")
    except KeyboardInterrupt:
        print("\ninterrupted: torn down; partial results follow")
        report.notes.append("interrupted")
    results = bench.results if bench else {}
    targets.build(results, report, plan.c_levels)
    report.details["results"] = results
    report.details["wall_s"] = round(time.monotonic() - began, 1)
    loadgen = {k: v.get("loadgen_cpu_pct_of_one_core") for k, v in results.items()
               if isinstance(v, dict) and "loadgen_cpu_pct_of_one_core" in v}
    print()
    print(report.table())
    print("ratio = ours / peer; for E, 1M rows / 1k rows; for G, G / A. C's overhead = our "
          "latency (or the peer's) minus the upstream's alone at the same concurrency.")
    print()
    print(f"{report.summary()}. Wall time {report.details['wall_s']:.0f} s"
          f"{'; peer: LiteLLM ' + version if version else ''}.")
    print("Load generator CPU (% of one core): "
          + ", ".join(f"{k} {v}" for k, v in loadgen.items()))
    for note in report.notes:
        print(f"note: {note.splitlines()[0]}")
    report.write(args.out)
    print(f"JSON: {args.out}; the servers' logs: {args.out.parent / 'logs'}")
    return 0 if "interrupted" not in report.notes else 130


def run_step(runner: asyncio.Runner, what: str, coro: object, report: object) -> None:
    """Run one scenario; a failure is noted and the next scenario runs."""
    began = time.monotonic()
    print(f"\n{what} ...", flush=True)
    try:
        runner.run(coro)  # type: ignore[arg-type]
    except Exception as exc:
        traceback.print_exc()
        report.notes.append(f"{what} failed: {exc!r}")  # type: ignore[attr-defined]
    print(f"  ({what}: {time.monotonic() - began:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())
