"""Results: rows of (scenario, metric, ours, peer, ratio, target, pass/fail), a table, JSON."""

import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Row:
    scenario: str
    metric: str
    ours: float | None = None
    peer: float | None = None
    ratio: float | None = None
    target: str = ""
    ok: bool | None = None  # None: no target, or nothing to judge it by


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, scenario: str, metric: str, ours: float | None = None,
            peer: float | None = None, *, ratio_: float | None = None, target: str = "",
            check: Any = None) -> Row:
        """A row; `ratio_` defaults to ours/peer; `check(row)` -> bool judges the target."""
        if ratio_ is None:
            ratio_ = ratio(ours, peer)
        row = Row(scenario, metric, ours, peer, ratio_, target)
        if check is not None:
            try:
                row.ok = bool(check(row))
            except TypeError:  # a figure is missing (None)
                row.ok = None
        self.rows.append(row)
        return row

    def table(self) -> str:
        header = ("scenario", "metric", "ours", "peer", "ratio", "target", "result")
        cells = [header] + [
            (r.scenario, r.metric, _num(r.ours), _num(r.peer), _num(r.ratio, ratio=True),
             r.target, {True: "PASS", False: "FAIL", None: "-" if not r.target else "n/a"}[r.ok])
            for r in self.rows]
        widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
        right = {2, 3, 4}
        lines = []
        for n, c in enumerate(cells):
            lines.append("  ".join(v.rjust(w) if i in right else v.ljust(w)
                                   for i, (v, w) in enumerate(zip(c, widths, strict=True))))
            if n == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def summary(self) -> str:
        judged = [r for r in self.rows if r.ok is not None]
        failed = [r for r in judged if not r.ok]
        text = f"{len(judged) - len(failed)}/{len(judged)} targets met"
        if failed:
            text += "; missed: " + "; ".join(f"{r.scenario} {r.metric}" for r in failed)
        return text

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"machine": machine(), "rows": [asdict(r) for r in self.rows],
                "summary": self.summary(), "notes": self.notes, "details": self.details}
        path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def _num(x: float | None, ratio: bool = False) -> str:
    if x is None:
        return ""
    if ratio:
        return f"{x:.2f}x"
    if abs(x) >= 100 or float(x).is_integer():
        return f"{x:.0f}"
    return f"{x:.1f}"


def machine() -> dict[str, Any]:
    import os

    info: dict[str, Any] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                            "kernel": platform.release()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["memory_gb"] = round(int(mem) / 2**20, 1)
        info["load_average_at_start"] = os.getloadavg()
    except OSError:
        pass
    return info
