"""The ExaBGP configuration: every value that reaches it is one plain token."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from netwatch.config import load_site
from netwatch.exabgp.config import render_exabgp_config

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def site(tmp_path):
    raw = yaml.safe_load((ROOT / "netwatch/lab/site/lab-site.yaml").read_text())
    raw["controller"]["probe"]["targets_file"] = str(ROOT / "netwatch/lab/site/targets/lab.yaml")
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_site(path)


def test_every_session_gets_a_neighbor_block(site):
    text = render_exabgp_config(site, ["/usr/bin/netwatch", "controller", "--config", "/s.yaml"])
    assert "run /usr/bin/netwatch controller --config /s.yaml;" in text
    assert text.count("neighbor ") == 8 and "neighbor 2001:db8:ffff:4::1 {" in text


@pytest.mark.parametrize(
    "argv",
    [
        ["/usr/bin/netwatch\n", "controller"],  # `$` matched before the newline
        ["/usr/bin/netwatch", "controller;", "run", "/bin/sh"],
        ["/usr/bin/netwatch", "--config", "/etc/net watch.yaml"],
        ["/usr/bin/netwatch", "fe80::1%eth0"],
        ["netwatch", "controller"],  # not an absolute path
    ],
)
def test_a_value_that_is_not_one_plain_token_is_refused(site, argv):
    with pytest.raises(ValueError):
        render_exabgp_config(site, argv)
