"""Counters and gauges for ``/metrics`` in the Prometheus text format (no client library).

A dozen numbers do not need a dependency; the text format is simple and stable.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

HELP = {
    "earmark_gateway_messages_in_total": ("counter", "MQTT messages received"),
    "earmark_gateway_merged_total": ("counter", "signal batches merged (counted once)"),
    "earmark_gateway_parked_total": (
        "counter",
        "merged batches from devices not yet registered (folded in on registration)",
    ),
    "earmark_gateway_deletions_total": ("counter", "deletion requests applied"),
    "earmark_gateway_duplicates_total": ("counter", "redeliveries of a message already counted"),
    "earmark_gateway_rejected_total": ("counter", "messages refused, by reason (dead letters)"),
    "earmark_gateway_batches_total": ("counter", "DB transactions committed"),
    "earmark_gateway_db_errors_total": ("counter", "DB transactions that failed and were retried"),
    "earmark_gateway_worker_restarts_total": (
        "counter",
        "merge worker processes that died and were replaced (their batches resent)",
    ),
    "earmark_gateway_queue_depth": ("gauge", "messages received, not yet sent to the worker"),
    "earmark_gateway_commit_lag_seconds": (
        "gauge",
        "last batch: receipt of its oldest message to commit",
    ),
    "earmark_gateway_window_lag_seconds": (
        "gauge",
        "last batch: end of its newest window to commit (device backlog shows here)",
    ),
    "earmark_gateway_broker_connected": ("gauge", "1 while connected to the broker"),
}


@dataclass
class Metrics:
    values: dict[str, float] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def inc(self, name: str, n: float = 1) -> None:
        with self._lock:
            self.values[name] = self.values.get(name, 0) + n

    def set(self, name: str, value: float) -> None:
        with self._lock:
            self.values[name] = value

    def reject(self, reason: str) -> None:
        with self._lock:
            self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def get(self, name: str) -> float:
        with self._lock:
            return self.values.get(name, 0)

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {**self.values, "rejected": dict(self.rejected)}

    def render(self) -> str:
        with self._lock:
            lines = []
            for name, (kind, text) in HELP.items():
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
                if name == "earmark_gateway_rejected_total":
                    for reason, n in sorted(self.rejected.items()):
                        lines.append(f'{name}{{reason="{_label(reason)}"}} {n}')
                else:
                    lines.append(f"{name} {_num(self.values.get(name, 0))}")
            return "\n".join(lines) + "\n"


def _label(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.6g}"
