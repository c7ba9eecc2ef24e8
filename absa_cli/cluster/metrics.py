"""The run's figures where Ray users look: Ray's metrics interface (``ray.util.metrics``).

A record sink beside ``metrics.jsonl``: every record the driver writes updates gauges and counters tagged with the
run id and the preset, which Ray's per-node metrics agent serves in Prometheus format (``ray start
--metrics-export-port``) and the Ray dashboard's Grafana panels read. Prometheus names carry Ray's ``ray_`` prefix:
``ray_absa_global_batch_size{run_id="...",preset="..."}``. Ray's metrics agent ships with ``ray[default]`` (absa's
``cluster`` extra); without it the figures go nowhere and cost nothing. docs/metrics.md lists every metric.
"""

from __future__ import annotations

from typing import Any

# gauge name → (record field, description); set from every epoch record
EPOCH_GAUGES = {
    "absa_epoch": ("epoch", "the last completed epoch (1-based)"),
    "absa_updates": ("updates", "optimizer steps since the start of the run"),
    "absa_global_batch_size": ("global_batch_size", "the global batch of the last epoch"),
    "absa_workers": ("num_workers", "workers in the group"),
    "absa_grad_accum_steps": ("grad_accum_steps", "gradient accumulation steps per optimizer step"),
    "absa_lr": ("lr", "learning rate of the last step"),
    "absa_lambda_max": ("eigenvalue", "top Hessian eigenvalue from the last curvature probe"),
    "absa_train_loss": ("train_loss", "mean training loss of the last epoch"),
    "absa_test_accuracy": ("test_acc", "test accuracy after the last epoch"),
    "absa_adv_ratio": ("adv_ratio", "fraction of each base batch replaced by FGSM examples"),
}
# counter name → (record kind, description)
COUNTERS = {
    "absa_resizes": ("resize", "live resizes of the worker group"),
    "absa_failures": ("failure", "worker failures recovered from"),
    "absa_restarts": ("restart", "restarts of the group from a checkpoint (or from the start)"),
}
TAGS = ("run_id", "preset")


class RayMetricsSink:
    """Records → Ray metrics, tagged with the run."""

    def __init__(self, run_id: str, preset: str) -> None:
        from ray.util.metrics import Counter, Gauge

        self.tags = {"run_id": run_id, "preset": preset or "none"}
        self.gauges = {name: Gauge(name, description=description, tag_keys=TAGS)
                       for name, (_, description) in EPOCH_GAUGES.items()}
        self.gauges["absa_samples_per_second"] = Gauge(
            "absa_samples_per_second", description="training samples per second over the last epoch",
            tag_keys=TAGS)
        self.gauges["absa_workers_requested"] = Gauge(
            "absa_workers_requested", description="workers asked of the autoscaler (0: no request)", tag_keys=TAGS)
        self.counters = {name: Counter(name, description=description, tag_keys=TAGS)
                         for name, (_, description) in COUNTERS.items()}

    def _set(self, name: str, value: Any) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:  # not None/NaN
            self.gauges[name].set(float(value), tags=self.tags)

    def write(self, record: dict[str, Any]) -> None:
        kind = record.get("kind")
        if kind == "epoch":
            for name, (field, _) in EPOCH_GAUGES.items():
                self._set(name, record.get(field))
            if record.get("epoch_s"):
                self._set("absa_samples_per_second", record.get("samples_seen", 0) / record["epoch_s"])
        elif kind == "geometry":  # the group changed: show it before the epoch ends
            self._set("absa_global_batch_size", record.get("global_batch_size"))
            self._set("absa_workers", record.get("num_workers"))
            self._set("absa_grad_accum_steps", record.get("grad_accum_steps"))
        elif kind == "demand":
            self._set("absa_workers_requested", record.get("workers"))
        for name, (counted, _) in COUNTERS.items():
            if kind == counted:
                self.counters[name].inc(1.0, tags=self.tags)

    def close(self) -> None:
        """Ray flushes the metrics itself."""
