"""Router advertisements that would fight the agent's IPv6 default route: which uplinks learn
a default router (the kernel's rule on accept_ra, forwarding and accept_ra_defrtr), and the
one warning the agent logs at start. The sysctls are files in tmp_path."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from netwatch.agent.daemon import Agent
from netwatch.agent.router_adverts import ra_defaults
from netwatch.config import AgentSection


def sysctls(conf, ifname, accept_ra, forwarding=0, defrtr=1):
    path = conf / ifname
    path.mkdir(parents=True)
    for name, value in (("accept_ra", accept_ra), ("forwarding", forwarding),
                        ("accept_ra_defrtr", defrtr)):
        (path / name).write_text(f"{value}\n")


@pytest.mark.parametrize("accept_ra, forwarding, defrtr, learns", [
    (1, 0, 1, True),  # the kernel's default on a host
    (0, 0, 1, False),
    (1, 1, 1, False),  # a router ignores them with accept_ra=1
    (2, 1, 1, True),  # ... not with 2
    (1, 0, 0, False),  # addresses from them, no default route: the recommended setting
])
def test_which_uplinks_learn_a_default_router(tmp_path, accept_ra, forwarding, defrtr, learns):
    sysctls(tmp_path, "eth0", accept_ra, forwarding, defrtr)
    assert ra_defaults(["eth0"], tmp_path) == (["eth0"] if learns else [])


def test_an_interface_without_ipv6_sysctls_learns_nothing(tmp_path):
    assert ra_defaults(["eth9"], tmp_path) == []


def agent(ipv6: bool) -> Agent:
    uplink6 = {"gateway6": "fe80::1"} if ipv6 else {}
    cfg = AgentSection.model_validate({
        "uplinks": {
            "primary": {"interface": "eth0", "gateway": "100.64.1.1", **uplink6},
            "secondary": {"interface": "eth1", "gateway": "100.64.2.1", **uplink6},
        },
        "probe": {"interval_ms": 20, "fall": 3, "rise": 2},
        "failback": {"mode": "auto", "hold_down_s": 1},
    })
    return Agent(cfg, CollectorRegistry(), kernel=None, probers=None)


def test_the_agent_warns_once_per_uplink_that_learns_a_default_router(tmp_path, caplog):
    sysctls(tmp_path, "eth0", accept_ra=1)
    sysctls(tmp_path, "eth1", accept_ra=1, defrtr=0)
    caplog.set_level(logging.WARNING, logger="netwatch.agent")
    agent(ipv6=True).warn_router_adverts(tmp_path)
    (record,) = [r for r in caplog.records if "ra_default_route" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert "interface=eth0" in record.getMessage()
    assert "net.ipv6.conf.eth0.accept_ra_defrtr=0" in record.getMessage()


def test_no_warning_when_the_agent_does_not_manage_ipv6(tmp_path, caplog):
    sysctls(tmp_path, "eth0", accept_ra=1)
    caplog.set_level(logging.WARNING, logger="netwatch.agent")
    agent(ipv6=False).warn_router_adverts(tmp_path)
    assert "ra_default_route" not in caplog.text
