"""What netwatch tells the monitoring around it, beyond its metrics.

- `silences` (pure): the Alertmanager silence that an operator's drain or forced failover
  opens for the alerts it makes expected, and how to find it again to extend or expire it;
  the HTTP side is `netwatch.adapters.alertmanager`;
- `queries` (pure but for reading the files it is given): every PromQL expression of the
  shipped rules and dashboards, and the metrics each one reads, for the checks that run them
  against a Prometheus and compare them with what the daemons export.

The alert rules, dashboards and Alertmanager example that read the metrics are in `grafana/`
at the top of the repository; docs/metrics.md lists every metric.
"""
