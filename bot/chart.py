"""The timeline chart an export attaches: one bar per step on a time axis, coloured by
outcome, with the finding, the card, the decision and the verified cut marked — people
read a picture of an incident faster than a table. Drawn with matplotlib's
object-oriented API on the Agg canvas (no pyplot, no global figure state: exports from
two threads do not share a figure)."""

from __future__ import annotations

import io
from datetime import datetime, timedelta
from typing import Any

from playbooks.lifecycle import Lifecycle, format_seconds, stages_line
from playbooks.models import Incident, StepRecord
from playbooks.status import StepStatus

COLOURS: dict[str, str] = {StepStatus.SUCCEEDED: "#2e7d32", StepStatus.FAILED: "#c62828",
           StepStatus.SKIPPED: "#9e9e9e", StepStatus.RUNNING: "#f9a825"}
MARKS = (("finding", "#6a1b9a"), ("card", "#1565c0"), ("decision", "#ef6c00"),
         ("cut verified", "#c62828"))
# A step shorter than this is still drawn, as a sliver one can see.
MIN_BAR = timedelta(milliseconds=40)


def timeline_png(incident: Incident, steps: list[StepRecord], life: Lifecycle) -> bytes:
    """The chart as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    timed = [s for s in steps if s.started_at is not None]
    height = 1.6 + 0.38 * max(len(timed), 1)
    fig = Figure(figsize=(10, height), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    origin = _origin(life, timed)

    def x(at: datetime) -> float:
        return (at - origin).total_seconds()

    for row, step in enumerate(timed):
        start = step.started_at
        assert start is not None
        end = step.finished_at or start
        width = max(end - start, MIN_BAR).total_seconds()
        ax.barh(row, width, left=x(start), height=0.6,
                color=COLOURS.get(step.status, "#607d8b"))
        ax.text(x(start) + width, row, f" {_took(step)}", va="center", fontsize=7)
    ax.set_yticks(range(len(timed)), [s.name for s in timed], fontsize=8)
    ax.invert_yaxis()
    marks = dict(zip((m for m, _ in MARKS),
                     (life.started if life.from_finding else None, life.card_posted,
                      life.decided, life.cut), strict=True))
    for (label, colour) in MARKS:
        at = marks[label]
        if at is not None and at >= origin:  # the finding may be long before: not drawn
            ax.axvline(x(at), color=colour, linestyle="--", linewidth=1.2, label=label)
    ax.set_xlabel(f"seconds from {origin:%Y-%m-%d %H:%M:%S} UTC")
    durations = life.durations()
    ax.set_title(f"{incident.id} — {incident.playbook} on {incident.target_id} — "
                 f"{incident.status}; time to cut "
                 f"{format_seconds(durations['time_to_cut'])}\n{stages_line(life)}",
                 fontsize=9)
    if any(marks.values()):
        ax.legend(loc="upper right", fontsize=7)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


def _origin(life: Lifecycle, steps: list[StepRecord]) -> datetime:
    """Where the axis starts: the decision, or the card when a long wait for the finding
    would squash the steps into a line (the finding then is off the left edge)."""
    candidates: list[Any] = [life.decided, life.card_posted, life.received]
    first = next((c for c in candidates if c is not None), life.received)
    starts = [s.started_at for s in steps if s.started_at is not None]
    return min([first, *starts]) if starts else first


def _took(step: StepRecord) -> str:
    if step.duration_ms is None:
        return step.status
    return f"{step.duration_ms / 1000:.1f} s" if step.duration_ms >= 100 else \
        f"{step.duration_ms} ms"
