"""A process's Prometheus metrics (`--metrics-port`): counted in plain integers by the
event loop, turned into metric families by prometheus-client's exporter thread when it
is scraped (a custom collector, as its documentation describes for "metrics from
another system"), each process's on a registry of its own (several may run in one test
process)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.exposition import start_http_server

__all__ = ["Exported"]


class Exported:
    """What a directory server's and a relay's metrics share: the registry they are
    collected on, and the exporter serving it."""

    def __init__(self) -> None:
        """Called last by a subclass's own (collect() reads its counts when registered)."""
        self.registry = CollectorRegistry()
        self._http: Any = None
        self.registry.register(self)  # a collector: it has collect()

    def collect(self) -> Iterator[Metric]:
        """The metric families, when the exporter is scraped (its thread)."""
        raise NotImplementedError

    def serve(self, host: str, port: int) -> int:
        """Export on http://host:port/metrics (a thread); returns the port bound."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        return int(self._http.server_address[1])

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
