"""What a relay tells its operator, in Prometheus' text format (`whatsap2p relay
--metrics-port P`, then `GET http://HOST:P/metrics`).

- `whatsap2p_relay_prefacing`: connections that have not sent their whole preface yet;
- `whatsap2p_relay_waiting`: halves waiting for their other half;
- `whatsap2p_relay_sessions`: joined pairs (until both halves have closed);
- `whatsap2p_relay_buffered_bytes`: bytes held in write buffers, waiting for a slower
  reader (flow control bounds it: see `RelayLimits.write_high`);
- `whatsap2p_relay_joined_total`: pairs joined;
- `whatsap2p_relay_forwarded_bytes_total`: bytes forwarded, both ways together;
- `whatsap2p_relay_refused_total{reason}`: connections refused or closed before joining:
  `forged`, `expired`, `replayed`, `busy`, `timeout` (their status byte's name),
  `garbled` (not a preface), `slow` (no whole preface in time), `evicted` (closed in its
  preface to make room for a newer connection);
- `whatsap2p_relay_idle_closed_total`: joined pairs closed for moving no byte;
- `whatsap2p_relay_throttled_total`: times a connection's reading was paused for its
  pair's or its source's byte rate.

As with the directory's metrics, the event loop counts in plain integers and the
exporter's thread turns them into metric families when scraped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from whatsap2p.metrics import Exported

__all__ = ["REASONS", "RelayMetrics"]

#: Every reason `whatsap2p_relay_refused_total` counts (each shown, at 0 until it happens).
REASONS = ("forged", "expired", "replayed", "busy", "timeout", "garbled", "slow", "evicted")


class RelayMetrics(Exported):
    def __init__(self, counts: Callable[[], tuple[int, int, int, int]]) -> None:
        """`counts()`: (prefacing, waiting, sessions, buffered bytes) now, when scraped
        (from the exporter's thread)."""
        self._counts = counts
        self.forwarded = 0
        self.joined = 0
        self.idle_closed = 0
        self.throttled = 0
        self.refusals = dict.fromkeys(REASONS, 0)
        super().__init__()

    def refused(self, reason: str) -> None:
        self.refusals[reason] += 1

    def collect(self) -> Iterator[Metric]:
        prefacing, waiting, sessions, buffered = self._counts()
        yield GaugeMetricFamily(
            "whatsap2p_relay_prefacing", "Connections not yet through their preface", prefacing
        )
        yield GaugeMetricFamily(
            "whatsap2p_relay_waiting", "Halves waiting for their other half", waiting
        )
        yield GaugeMetricFamily("whatsap2p_relay_sessions", "Joined pairs", sessions)
        yield GaugeMetricFamily(
            "whatsap2p_relay_buffered_bytes", "Bytes held for slower readers", buffered
        )
        yield CounterMetricFamily("whatsap2p_relay_joined", "Pairs joined", self.joined)
        yield CounterMetricFamily(
            "whatsap2p_relay_forwarded_bytes", "Bytes forwarded, both ways", self.forwarded
        )
        refused = CounterMetricFamily(
            "whatsap2p_relay_refused", "Connections refused before joining", labels=["reason"]
        )
        for reason, count in list(self.refusals.items()):
            refused.add_metric([reason], count)
        yield refused
        yield CounterMetricFamily(
            "whatsap2p_relay_idle_closed",
            "Joined pairs closed for moving no byte",
            self.idle_closed,
        )
        yield CounterMetricFamily(
            "whatsap2p_relay_throttled",
            "Times a connection was paused for its byte rate",
            self.throttled,
        )
