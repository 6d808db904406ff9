"""What a directory server tells its operator, in Prometheus' text format
(`whatsap2p server --metrics-port P`, then `GET http://HOST:P/metrics`).

- `whatsap2p_online_users`: users registered through this server now;
- `whatsap2p_lookups_total`: numbers looked up (rate() gives lookups/s);
- `whatsap2p_requests_total{kind}`: requests answered, by kind;
- `whatsap2p_rejected_total{reason}`: requests refused (rate-limited, number-bound,
  number-online, protocol-error, unavailable);
- `whatsap2p_request_seconds{kind}`: how long answering took, a histogram.

Each server has a registry of its own (several may run in one test process); the
numbers are updated on the event loop and read by the exporter's thread.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import start_http_server

__all__ = ["ServerMetrics"]

_KINDS = ("register", "lookup", "watch", "unregister", "ping")
_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.online_users = 0
        online = Gauge(
            "whatsap2p_online_users", "Users registered through this server", registry=self.registry
        )
        online.set_function(lambda: self.online_users)
        self.lookups = Counter(
            "whatsap2p_lookups", "Numbers looked up (lookups and watches)", registry=self.registry
        )
        requests = Counter(
            "whatsap2p_requests", "Requests answered", ["kind"], registry=self.registry
        )
        latency = Histogram(
            "whatsap2p_request_seconds",
            "Time from reading a request to writing its answer",
            ["kind"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self._rejected = Counter(
            "whatsap2p_rejected", "Requests refused", ["reason"], registry=self.registry
        )
        # children bound once: a label lookup per request would cost more than the count
        self._requests = {kind: requests.labels(kind) for kind in _KINDS}
        self._latency = {kind: latency.labels(kind) for kind in _KINDS}
        self._reasons: dict[str, Any] = {}
        self._http: Any = None

    def answered(self, kind: str, seconds: float) -> None:
        self._requests[kind].inc()
        self._latency[kind].observe(seconds)

    def rejected(self, reason: str) -> None:
        child = self._reasons.get(reason)
        if child is None:
            child = self._reasons[reason] = self._rejected.labels(reason)
        child.inc()

    def serve(self, host: str, port: int) -> int:
        """Export on http://host:port/metrics (a thread); returns the port bound."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        return int(self._http.server_address[1])

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
