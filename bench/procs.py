"""Memory and CPU of a process tree, read from /proc (Linux only)."""

import asyncio
import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    # The command name (field 2) may contain spaces: split after its closing parenthesis.
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2:].split()


def descendants(root: int) -> list[int]:
    """`root` and every process below it, parents first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(_stat_fields(int(entry))[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        found.append(pid)
        todo.extend(sorted(children.get(pid, [])))
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process so far."""
    try:
        fields = _stat_fields(pid)
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_kb(pid: int) -> dict[str, int]:
    """Rss and Pss (kB) from /proc/PID/smaps_rollup; empty if the process is gone."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("Rss", "Pss"):
                out[name.lower()] = int(rest.split()[0])
    except OSError:
        pass
    return out


def peak_rss_kb(pid: int) -> int:
    """VmHWM: the highest RSS since start or since reset_peak()."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak(pid: int) -> None:
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def command(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


@dataclass
class Tree:
    """A named process tree (a server and its children), e.g. "api" or "worker"."""

    name: str
    root: int

    def pids(self) -> list[int]:
        return descendants(self.root)

    def cpu(self) -> float:
        return sum(cpu_seconds(p) for p in self.pids())


@dataclass
class Matching(Tree):
    """The processes whose command line contains `text` (e.g. PostgreSQL's backends of one
    database: "postgres: 15/main: postgres gih_bench_123 ..."); `root` is unused."""

    text: str = ""

    def pids(self) -> list[int]:
        return [int(e) for e in os.listdir("/proc") if e.isdigit() and self.text in command(int(e))]


def cpu_of(trees: list[Tree]) -> float:
    return sum(t.cpu() for t in trees)


def snapshot(trees: list[Tree]) -> dict[str, dict[str, int]]:
    """{"api:1234": {"rss": kB, "pss": kB}, ...} for every process of the trees."""
    out = {}
    for tree in trees:
        for pid in tree.pids():
            mem = memory_kb(pid)
            if mem:
                out[f"{tree.name}:{pid}"] = mem
    return out


@dataclass
class PeakSampler:
    """Samples PSS/RSS of the trees in the background and keeps each process's peak."""

    trees: list[Tree]
    interval: float = 0.2
    peaks: dict[str, dict[str, int]] = field(default_factory=dict)
    total_pss_peak: int = 0
    _task: asyncio.Task | None = None

    def _sample(self) -> None:
        snap = snapshot(self.trees)
        self.total_pss_peak = max(self.total_pss_peak, sum(m.get("pss", 0) for m in snap.values()))
        for proc, mem in snap.items():
            peak = self.peaks.setdefault(proc, {"rss": 0, "pss": 0})
            for key in ("rss", "pss"):
                peak[key] = max(peak[key], mem.get(key, 0))

    async def _run(self) -> None:
        while True:
            self._sample()
            await asyncio.sleep(self.interval)

    async def __aenter__(self) -> "PeakSampler":
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._sample()
