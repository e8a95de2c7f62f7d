"""What netwatch tells the monitoring around it, beyond its metrics.

- `silences` (pure): the Alertmanager silence that an operator's drain or forced failover
  opens for the alerts it makes expected, and how to find it again to extend or expire it;
  the HTTP side is `netwatch.adapters.alertmanager`.

The alert rules, dashboards and Alertmanager example that read the metrics are in `grafana/`
at the top of the repository; docs/metrics.md lists every metric.
"""
