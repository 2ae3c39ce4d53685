"""The report: report.json and report.md, rewritten after every section (and each training case),
so a run cut short still says what it found."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ntire.files import atomic_write_text

MEASURED, PROJECTED = "measured", "projected"


@dataclass
class Section:
    name: str
    status: str = "pending"
    """pending, running, ok, error, skipped or interrupted."""
    seconds: float | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    traceback: str | None = None

    def row(self, **fields: Any) -> dict[str, Any]:
        self.rows.append(fields)
        return fields

    def check(self, item: str, ok: bool, **fields: Any) -> bool:
        """A row whose `check` column says pass or FAIL."""
        self.rows.append({"item": item, **fields, "check": "pass" if ok else "FAIL"})
        return ok

    @property
    def failed_checks(self) -> int:
        return sum(1 for r in self.rows if r.get("check") == "FAIL")


class Report:
    def __init__(self, out: Path, meta: dict[str, Any], sections: tuple[str, ...]):
        self.out = out
        self.meta = meta
        self.started = time.monotonic()
        self.sections = {name: Section(name) for name in sections}
        self.current: Section | None = None

    def summary(self) -> dict[str, Any]:
        statuses = [s.status for s in self.sections.values()]
        return {
            "ok": statuses.count("ok"),
            "error": statuses.count("error") + statuses.count("interrupted"),
            "skipped": statuses.count("skipped"),
            "failed_checks": sum(s.failed_checks for s in self.sections.values()),
            "elapsed_s": round(time.monotonic() - self.started, 1),
        }

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        data = {**self.meta, "summary": self.summary(), "sections": [asdict(s) for s in self.sections.values()]}
        atomic_write_text(self.out / "report.json", json.dumps(data, indent=1, default=str) + "\n")
        atomic_write_text(self.out / "report.md", self.markdown())

    def markdown(self) -> str:
        m, s = self.meta, self.summary()
        lines = [
            f"# ntire GPU proof: {m['device']}",
            "",
            f"- mode: {m['mode']}",
            f"- device: {m['device']}; torch {m['torch']}; python {m['python']}; {m['cpu_cores']} CPU cores",
            f"- started {m['started_utc']}; elapsed {s['elapsed_s']} s of a {m['budget_s']} s budget",
            "- figures: **measured** = timed or computed on this machine in this run (CUDA events after a "
            "warm-up on a GPU, perf_counter on the CPU); **projected** = extrapolated from measured "
            "figures, as the row's note says",
            f"- result: {s['ok']} sections ok, {s['error']} failed, {s['skipped']} skipped; "
            f"{s['failed_checks']} failed checks",
        ]
        for note in m.get("notes", []):
            lines.append(f"- {note}")
        for i, sec in enumerate(self.sections.values(), 1):
            took = f", {sec.seconds:.1f} s" if sec.seconds is not None else ""
            lines += ["", f"## {i}. {sec.name}: {sec.status}{took}", ""]
            if sec.error:
                lines += [f"**error**: {cell(sec.error)}", "", "```", (sec.traceback or "").rstrip(), "```", ""]
            lines += [f"- {note}" for note in sec.notes]
            if sec.notes:
                lines.append("")
            if sec.rows:
                columns: list[str] = []
                for row in sec.rows:
                    columns += [k for k in row if k not in columns]
                lines.append("| " + " | ".join(columns) + " |")
                lines.append("|" + "---|" * len(columns))
                for row in sec.rows:
                    lines.append("| " + " | ".join(cell(row.get(c)) for c in columns) + " |")
        return "\n".join(lines) + "\n"


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")
