"""The Grafana dashboard and Prometheus alert rules name only metrics the code exports,
show the worker, and never add up what every serve replica reports about the same Redis."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

import streams.serving.cache_sink
import streams.serving.triggers
import streams.serving.web  # noqa: F401
from streams.worker.metrics import REGISTRY as WORKER_REGISTRY
from streams.worker.metrics import ConsumerLag, ProcessorCounts

pytestmark = pytest.mark.unit

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
METRIC = re.compile(r"\b(?:segments|process|python)_[a-z_]+")
DASHBOARD = DEPLOY / "grafana" / "purchase-segments-churn.json"
SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")


def exported() -> set[str]:
    """What `segments serve` (the default registry) and `segments worker` export."""
    names: set[str] = set()
    for collector in list(REGISTRY._collector_to_names):
        for metric in collector.describe() if hasattr(collector, "describe") else []:
            names.add(metric.name)
    names.update(metric.name for metric in ProcessorCounts({}).collect())
    names.update(metric.name for metric in ConsumerLag(lambda: None, ()).describe())
    names.update(REGISTRY._names_to_collectors)  # with the process collector's
    names.update(WORKER_REGISTRY._names_to_collectors)
    return names


def base(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def panel_expressions() -> dict[str, list[str]]:
    """Each dashboard panel's title -> its query expressions."""
    dashboard = json.loads(DASHBOARD.read_text())
    return {
        panel["title"]: [target["expr"] for target in panel.get("targets", [])]
        for panel in dashboard["panels"]
    }


def expressions() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    exprs += [expr for panel in panel_expressions().values() for expr in panel]
    return exprs


def test_every_metric_in_alerts_and_dashboard_is_exported() -> None:
    known = {base(name) for name in exported()}
    used = {base(name) for expr in expressions() for name in METRIC.findall(expr)}
    assert used, "no metric found in the monitoring files"
    assert used <= known, f"unknown metrics: {sorted(used - known)}"


def test_alert_rules_have_names_severities_and_summaries() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    for rule in (r for group in rules["groups"] for r in group["rules"]):
        assert rule["alert"] and rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]


def _anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_alert_links_a_runbook_section_that_exists() -> None:
    docs = DEPLOY.parent / "docs"
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    for rule in (r for group in rules["groups"] for r in group["rules"]):
        runbook = rule["annotations"].get("runbook")
        if rule["labels"]["severity"] == "critical" or rule["alert"] in CHECKED_RUNBOOKS:
            assert runbook, f"{rule['alert']} has no runbook link"
        if runbook is None:
            continue
        path, _, anchor = runbook.partition("#")
        text = (docs.parent / path).read_text()
        anchors = {_anchor(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}
        assert anchor in anchors, f"{rule['alert']}: no heading for #{anchor} in {path}"


# The alerts issue 12 asks a runbook link of (dead letters, deadline lateness, target down).
CHECKED_RUNBOOKS = {"PurchaseDeadLetters", "DeadlinesHandledLate", "SegmentsTargetDown"}


def test_every_dashboard_panel_queries_only_exported_metrics() -> None:
    known = {base(name) for name in exported()}
    for title, exprs in panel_expressions().items():
        used = {base(name) for expr in exprs for name in METRIC.findall(expr)}
        assert used, f"panel {title!r} queries no metric of the product"
        assert used <= known, f"panel {title!r}: unknown metrics {sorted(used - known)}"


def test_the_dashboard_shows_the_worker_and_the_processes() -> None:
    worker = {
        "segments_worker_messages",  # throughput
        "segments_worker_consumer_lag",
        "segments_worker_dead_letters",
        "segments_deadline_lateness_seconds",
    }
    process = {"process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds"}
    dashboard = {
        base(name) for exprs in panel_expressions().values() for e in exprs
        for name in METRIC.findall(e)
    }  # fmt: skip
    assert worker <= dashboard, sorted(worker - dashboard)
    assert process <= dashboard


@pytest.mark.parametrize("registry", [REGISTRY, WORKER_REGISTRY], ids=["serve", "worker"])
def test_both_processes_export_process_metrics(registry: object) -> None:
    names = {metric.name for metric in registry.collect()}  # type: ignore[attr-defined]
    for name in ("process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds",
                 "process_start_time_seconds"):  # fmt: skip
        assert name in names


# Gauges every serve replica reports about the same shared thing (the SCARD of one Redis,
# the lag of one consumer group's partition, the one cache): with N replicas a sum
# counts each N times. Take max/min/avg (by the identifying labels) first.
SHARED_GAUGES = (
    "segments_size",
    "segments_serving_consumer_lag",
    "segments_cache_complete",
    "segments_cache_redis_up",
)
ADDING = {"sum", "count"}


def enclosing_function(expr: str, start: int) -> str | None:
    """The aggregation or function whose parentheses directly hold expr[start:]."""
    i = start - 1
    while i >= 0 and expr[i].isspace():
        i -= 1
    if i < 0 or expr[i] != "(":
        return None
    i -= 1
    while i >= 0 and expr[i].isspace():
        i -= 1
    if i >= 0 and expr[i] == ")":  # a `by (...)` / `without (...)` clause
        i = expr.rindex("(", 0, i) - 1
        while i >= 0 and expr[i].isspace():
            i -= 1
        end = i + 1
        while i >= 0 and expr[i].isalpha():
            i -= 1
        assert expr[i + 1 : end] in ("by", "without"), expr
        while i >= 0 and expr[i].isspace():
            i -= 1
    end = i + 1
    while i >= 0 and (expr[i].isalnum() or expr[i] == "_"):
        i -= 1
    return expr[i + 1 : end] or None


def summed_shared_gauges(expr: str) -> list[str]:
    found = []
    for name in SHARED_GAUGES:
        for match in re.finditer(rf"\b{name}\b", expr):
            if enclosing_function(expr, match.start()) in ADDING:
                found.append(name)
    return found


def test_the_summing_check_finds_a_sum_over_replicas() -> None:
    assert summed_shared_gauges("sum by (segment) (segments_size)") == ["segments_size"]
    assert summed_shared_gauges("sum(segments_size{segment='vip'})") == ["segments_size"]
    assert summed_shared_gauges("count without (instance) (segments_cache_redis_up)")
    assert summed_shared_gauges("max by (segment) (segments_size)") == []
    assert (
        summed_shared_gauges(
            "sum by (group) (max by (group, partition) (segments_serving_consumer_lag))"
        )
        == []
    )
    assert summed_shared_gauges("abs(segments_size - segments_size offset 1h) > 50") == []


def test_no_panel_or_alert_adds_up_what_every_serve_replica_reports() -> None:
    offenders = {expr: summed_shared_gauges(expr) for expr in expressions()}
    assert {expr: names for expr, names in offenders.items() if names} == {}
