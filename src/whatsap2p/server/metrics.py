"""What a directory server tells its operator, in Prometheus' text format
(`whatsap2p server --metrics-port P`, then `GET http://HOST:P/metrics`).

- `whatsap2p_online_users`: users registered through this server now;
- `whatsap2p_lookups_total`: numbers looked up (rate() gives lookups/s);
- `whatsap2p_reversals_total`: requests to connect back (`reverse`) passed on to the
  module asked, by the server it is connected to (whichever server the asker is on:
  each counts once); refused ones count under `rejected` at the asker's server;
- `whatsap2p_relayed_total`: pairs of modules introduced at a relay (`relay`);
- `whatsap2p_connections_total{route}`: connections between modules, as the module
  that opened them reports (`report`), by the way that worked: `lan`, `direct`,
  `reverse`, `punched`, `relay`, or `none` (no way did);
- `whatsap2p_rendezvous_total{outcome}`: of those, the attempts that asked this server to
  have the other module connect back and punch (`reverse`), by what came of it: `reverse`
  or `punched` (the punch success rate is `punched` over all of them), `direct` or `lan`
  (the dial got there first after all), `relay`, `none`;
- `whatsap2p_requests_total{kind}`: requests answered, by kind;
- `whatsap2p_store_events_total{event}`: with --redis: `store-lost` / `store-back` (the
  shared store stopped or started answering), `binding-restored` (a renewal put back a
  binding the store had lost), `binding-conflict` (a renewal found the number bound to
  another key: that registration ended), `binding-unreplicated` (no replica took a new
  binding in time: the registration was refused);
- `whatsap2p_rejected_total{reason}`: requests refused (rate-limited, number-bound,
  number-online, protocol-error, unavailable);
- `whatsap2p_request_seconds{kind}`: how long answering took, a histogram.


The event loop counts in plain integers (a request costs two list updates, not four
locked metric calls), exported as whatsap2p/metrics.py says.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from whatsap2p.metrics import Exported

__all__ = ["ServerMetrics"]

_KINDS = ("register", "lookup", "watch", "reverse", "relay", "report", "unregister", "ping")
_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)


class _Latency:
    """One kind's histogram: a count per bucket (the last one is +Inf) and the sum."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(_BUCKETS) + 1)
        self.total = 0.0


class ServerMetrics(Exported):
    def __init__(self, online_users: Callable[[], int]) -> None:
        """`online_users()` counts them when scraped (from the exporter's thread)."""
        self._online_users = online_users
        self.lookups = 0  # numbers looked up
        self.reversals = 0  # requests to connect back passed on
        self.relayed = 0  # pairs introduced at a relay
        self._latency = {kind: _Latency() for kind in _KINDS}
        self._rejected: dict[str, int] = {}
        self._connections: dict[str, int] = {}
        self._rendezvous: dict[str, int] = {}
        self._store: dict[str, int] = {}
        super().__init__()

    def answered(self, kind: str, seconds: float) -> None:
        latency = self._latency[kind]
        latency.counts[bisect.bisect_left(_BUCKETS, seconds)] += 1
        latency.total += seconds

    def rejected(self, reason: str) -> None:
        self._rejected[reason] = self._rejected.get(reason, 0) + 1

    def connected(self, route: str, asked: bool) -> None:
        """A module reported a connection made by `route`; `asked`: after a `reverse`
        passed on for it."""
        self._connections[route] = self._connections.get(route, 0) + 1
        if asked:
            self._rendezvous[route] = self._rendezvous.get(route, 0) + 1

    def store_event(self, event: str) -> None:
        """The shared store (redis_store.py) was lost or is back, its master changed
        (Sentinel), or a binding was put back, found bound to another key, or not taken
        by a replica in time."""
        self._store[event] = self._store.get(event, 0) + 1

    def store_events(self, event: str) -> int:
        return self._store.get(event, 0)

    def connections(self, route: str) -> int:
        return self._connections.get(route, 0)

    def rendezvous(self, outcome: str) -> int:
        return self._rendezvous.get(outcome, 0)

    def collect(self) -> Iterator[Metric]:
        """The metric families, when the exporter is scraped (its thread)."""
        yield GaugeMetricFamily(
            "whatsap2p_online_users", "Users registered through this server", self._online_users()
        )
        yield CounterMetricFamily(
            "whatsap2p_lookups", "Numbers looked up (lookups and watches)", self.lookups
        )
        yield CounterMetricFamily(
            "whatsap2p_reversals", "Requests to connect back passed on", self.reversals
        )
        yield CounterMetricFamily(
            "whatsap2p_relayed", "Pairs of modules introduced at a relay", self.relayed
        )
        requests = CounterMetricFamily("whatsap2p_requests", "Requests answered", labels=["kind"])
        latency = HistogramMetricFamily(
            "whatsap2p_request_seconds",
            "Time from reading a request to writing its answer",
            labels=["kind"],
        )
        for kind, seen in self._latency.items():
            counts, running, buckets = list(seen.counts), 0, []
            for bound, count in zip((*map(str, _BUCKETS), "+Inf"), counts, strict=True):
                running += count
                buckets.append((bound, running))
            requests.add_metric([kind], running)
            latency.add_metric([kind], buckets, seen.total)
        connections = CounterMetricFamily(
            "whatsap2p_connections", "Connections between modules, by route", labels=["route"]
        )
        for route, count in list(self._connections.items()):
            connections.add_metric([route], count)
        yield connections
        rendezvous = CounterMetricFamily(
            "whatsap2p_rendezvous",
            "Attempts that asked to connect back and punch, by outcome",
            labels=["outcome"],
        )
        for outcome, count in list(self._rendezvous.items()):
            rendezvous.add_metric([outcome], count)
        yield rendezvous
        yield requests
        yield latency
        store = CounterMetricFamily(
            "whatsap2p_store_events",
            "The shared directory store lost and back, its master changed, bindings put back,"
            " in conflict or not replicated in time",
            labels=["event"],
        )
        for event, count in list(self._store.items()):
            store.add_metric([event], count)
        yield store
        rejected = CounterMetricFamily("whatsap2p_rejected", "Requests refused", labels=["reason"])
        for reason, count in list(self._rejected.items()):
            rejected.add_metric([reason], count)
        yield rejected
