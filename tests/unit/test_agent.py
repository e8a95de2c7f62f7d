"""The agent daemon without a kernel: its settings from the site file, its metrics, and how it
survives (or stops on) errors, driven through a fake netlink and fake probers."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from netwatch.agent import settings_of
from netwatch.agent_metrics import AgentMetrics
from netwatch.config import Agent as AgentConfig
from netwatch.model import UplinkRole
from netwatch.uplink import Family, ProbeKind

P, S = UplinkRole.PRIMARY, UplinkRole.SECONDARY


def agent_config(**probe) -> AgentConfig:
    return AgentConfig.model_validate({
        "uplinks": {
            "primary": {"interface": "eth0", "gateway": "100.64.1.1", "gateway6": "fe80::1",
                        "source": "198.51.100.10"},
            "secondary": {"interface": "eth1", "gateway": "100.64.2.1", "gateway6": "fe80::1",
                          "source": "198.51.100.20"},
        },
        "probe": {"interval_ms": 20, "fall": 3, "rise": 2, **probe},
        "failback": {"mode": "auto", "hold_down_s": 0.2},
    })


def test_settings_probe_what_the_site_file_names():
    both = settings_of(agent_config(beyond=["203.0.113.1", "2001:db8:203::1"]))
    assert both.kinds == (ProbeKind.GATEWAY, ProbeKind.GATEWAY6, ProbeKind.BEYOND4,
                          ProbeKind.BEYOND6)
    assert both.families == (Family.V4, Family.V6)
    v4_beyond = settings_of(agent_config(beyond=["203.0.113.1"]))
    assert v4_beyond.kinds == (ProbeKind.GATEWAY, ProbeKind.GATEWAY6, ProbeKind.BEYOND4)


def test_probe_metrics_keep_the_kind_labels_dashboards_read():
    registry = CollectorRegistry()
    metrics = AgentMetrics(registry)
    metrics.probe(P, ProbeKind.GATEWAY6, None)
    metrics.stream(S, ProbeKind.BEYOND4).count(0.002)
    metrics.update_loss()

    def sample(name, **labels):
        return registry.get_sample_value(name, labels)

    assert sample("netwatch_agent_probes_total", uplink="primary", kind="gateway6",
                  result="lost") == 1
    assert sample("netwatch_agent_probe_loss_ratio", uplink="primary", kind="gateway6") == 1
    assert sample("netwatch_agent_probes_total", uplink="secondary", kind="beyond4",
                  result="ok") == 1
    assert sample("netwatch_agent_probe_rtt_seconds_count", uplink="secondary",
                  kind="beyond4") == 1
