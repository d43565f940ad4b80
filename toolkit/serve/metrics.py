"""Prometheus metrics, under Triton's names where Triton has one.

Counts live in plain attributes updated on the event loop (no lock per request); a collector turns
them into metric families when /metrics is scraped, in prometheus_client's text format.

Triton declares its nv_* metrics counters; prometheus_client renames every counter NAME_total, so
they are exposed here untyped under Triton's exact names (dashboards written for Triton find them).
As in Triton, nv_inference_compute_infer_duration_us adds a batch's compute time once per request
in it; toolkit_batch_compute_duration_us adds it once per batch, so the model's compute time per
image is toolkit_batch_compute_duration_us / nv_inference_count.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

REJECT_REASONS = ("queue_full", "draining", "timeout")


@dataclass
class ModelStats:
    name: str
    version: str = "1"
    max_batch: int = 1
    success: int = 0
    failure: dict = field(default_factory=dict)  # reason -> count
    inferences: int = 0
    executions: int = 0
    request_us: float = 0.0
    queue_us: float = 0.0
    compute_us: float = 0.0  # Triton's: a batch's compute time once per request in it
    batch_compute_us: float = 0.0  # once per batch
    batch_sizes: list = field(default_factory=list)  # count per bucket of buckets()
    batch_size_sum: int = 0
    rejected: dict = field(default_factory=dict)  # reason -> count
    reloads: dict = field(default_factory=dict)  # "success"/"failure" -> count
    last_reload_failed: bool = False

    def __post_init__(self):
        self._edges = self.buckets()  # once: executed() runs once per batch
        self.batch_sizes = [0] * len(self._edges)

    def buckets(self) -> list[int]:
        edges, n = [], 1
        while n < self.max_batch:
            edges.append(n)
            n *= 2
        return edges + [self.max_batch]

    def executed(self, rows: int, seconds: float, waits: list[float]) -> None:
        self.executions += 1
        self.inferences += rows
        us = seconds * 1e6
        self.batch_compute_us += us
        self.compute_us += us * len(waits)
        self.queue_us += sum(waits) * 1e6
        edges = self._edges
        self.batch_sizes[min(bisect.bisect_left(edges, rows), len(edges) - 1)] += 1
        self.batch_size_sum += rows

    def answered(self, seconds: float, ok: bool, reason: str = "OTHER") -> None:
        self.request_us += seconds * 1e6
        if ok:
            self.success += 1
        else:
            self.failure[reason] = self.failure.get(reason, 0) + 1

    def reject(self, reason: str) -> None:
        """Refused before the model (a full queue, draining, a deadline): a failure of reason REJECTED, as in Triton."""
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        self.failure["REJECTED"] = self.failure.get("REJECTED", 0) + 1


class ServeCollector:
    """A prometheus_client collector over the served models' ModelStats (``stats()`` gives the current list)."""

    def __init__(self, stats):
        self._stats = stats

    def collect(self):
        models = self._stats()

        def triton(name: str, doc: str, value) -> Metric:
            family = Metric(name, doc, "unknown")
            for s in models:
                family.add_sample(name, {"model": s.name, "version": s.version}, value(s))
            return family

        yield triton("nv_inference_request_success", "Number of successful inference requests, all batch sizes",
                     lambda s: s.success)
        failure = Metric("nv_inference_request_failure", "Number of failed inference requests, all batch sizes",
                         "unknown")
        for s in models:
            for reason in ("REJECTED", "CANCELED", "BACKEND", "OTHER"):
                failure.add_sample("nv_inference_request_failure",
                                   {"model": s.name, "version": s.version, "reason": reason},
                                   s.failure.get(reason, 0))
        yield failure
        yield triton("nv_inference_count", "Number of inferences performed (batch rows; padding not counted)",
                     lambda s: s.inferences)
        yield triton("nv_inference_exec_count", "Number of model executions performed (batches)",
                     lambda s: s.executions)
        yield triton("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds",
                     lambda s: s.request_us)
        yield triton("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds",
                     lambda s: s.queue_us)
        yield triton("nv_inference_compute_infer_duration_us",
                     "Cumulative compute inference duration in microseconds (a batch's time once per request)",
                     lambda s: s.compute_us)
        batch_us = CounterMetricFamily("toolkit_batch_compute_duration_us",
                                       "Cumulative model compute time in microseconds, once per batch",
                                       labels=["model", "version"])
        for s in models:
            batch_us.add_metric([s.name, s.version], s.batch_compute_us)
        yield batch_us
        sizes = HistogramMetricFamily("toolkit_batch_size", "Rows per model execution", labels=["model", "version"])
        for s in models:
            cumulative, buckets = 0, []
            for edge, count in zip(s.buckets(), s.batch_sizes):
                cumulative += count
                buckets.append((str(edge), cumulative))
            buckets.append(("+Inf", cumulative))
            sizes.add_metric([s.name, s.version], buckets, s.batch_size_sum)
        yield sizes
        rejected = CounterMetricFamily("toolkit_rejected_requests", "Requests refused before reaching the model",
                                       labels=["model", "reason"])
        for s in models:
            for reason in REJECT_REASONS:
                rejected.add_metric([s.name, reason], s.rejected.get(reason, 0))
        yield rejected
        reloads = CounterMetricFamily("toolkit_model_reloads", "SIGHUP reloads of a model file",
                                      labels=["model", "result"])
        failed = GaugeMetricFamily("toolkit_model_reload_failed",
                                   "1 when the last reload of the model's file failed (the old model serves)",
                                   labels=["model"])
        for s in models:
            for result in ("success", "failure"):
                reloads.add_metric([s.name, result], s.reloads.get(result, 0))
            failed.add_metric([s.name], int(s.last_reload_failed))
        yield reloads
        yield failed


def registry_for(stats) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServeCollector(stats))
    return registry
