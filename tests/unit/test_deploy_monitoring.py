"""The Grafana dashboard and Prometheus alert rules name only metrics the code exports."""

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
METRIC = re.compile(r"\bsegments_[a-z_]+")
SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")


def exported() -> set[str]:
    """What `segments serve` (the default registry) and `segments worker` export."""
    names: set[str] = set()
    for collector in list(REGISTRY._collector_to_names):
        for metric in collector.describe() if hasattr(collector, "describe") else []:
            names.add(metric.name)
    names.update(metric.name for metric in ProcessorCounts({}).collect())
    names.update(metric.name for metric in ConsumerLag(lambda: None, ()).describe())
    names.update(WORKER_REGISTRY._names_to_collectors)
    return names


def base(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def expressions() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads((DEPLOY / "grafana" / "purchase-segments-churn.json").read_text())
    exprs += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
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
