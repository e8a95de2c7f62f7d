"""The site file loader: valid files load, every mistake is reported with file, line, path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netwatch.config import ConfigError, Site, load_site, load_targets

REPO = Path(__file__).resolve().parents[3]
PROBES = REPO / "probes"
LAB_SITE_DIR = REPO / "netwatch" / "lab" / "site"
SITE_FILES = sorted([*PROBES.glob("*.yaml"), *LAB_SITE_DIR.glob("*.yaml")])
CATALOGUES = sorted(
    [*(PROBES / "targets").glob("*.yaml"), *(LAB_SITE_DIR / "targets").glob("*.yaml")]
)

# IPv4 prefixes only: one IPv6 session among three upstreams could never carry an IPv6 prefix
# under min_announcing_upstreams 2 (refused, see test_protection_settings_are_refused).
MINIMAL = """\
site: t
asn: 64500
prefixes: [198.51.100.0/24]
controller:
  upstreams:
    - {name: a, asn: 64501, interface: ea, neighbor: 192.0.2.1, local_address: 192.0.2.2,
       neighbor6: "2001:db8::1", local_address6: "2001:db8::2"}
    - {name: b, asn: 64502, interface: eb, neighbor: 192.0.2.5, local_address: 192.0.2.6}
    - {name: c, asn: 64503, interface: ec, neighbor: 192.0.2.9, local_address: 192.0.2.10}
  probe:
    targets: [203.0.113.1, 203.0.113.2, 203.0.113.3]
"""


def write(tmp_path: Path, text: str, name: str = "site.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def errors_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_site(path)
    return caught.value.errors


@pytest.mark.parametrize("path", SITE_FILES, ids=lambda p: p.name)
def test_every_shipped_site_file_loads(path: Path) -> None:
    site = load_site(path)
    assert site.prefixes


@pytest.mark.parametrize("path", CATALOGUES, ids=lambda p: p.name)
def test_every_shipped_target_catalogue_loads(path: Path) -> None:
    assert len(load_targets(path)) >= 3


def test_defaults_are_filled_in(tmp_path: Path) -> None:
    site = load_site(write(tmp_path, MINIMAL))
    policy = site.controller.policy
    assert policy.min_announcing_upstreams == 2
    assert policy.degraded.action == "prepend" and policy.failed.action == "withdraw"
    assert site.metrics.controller == "127.0.0.1:9111"
    assert site.metrics.agent == "127.0.0.1:9110"
    assert site.control.agent != site.control.controller
    assert [str(t.address) for t in site.controller.probe.targets] == [
        "203.0.113.1",
        "203.0.113.2",
        "203.0.113.3",
    ]
    assert site.controller.upstreams[0].probe_nexthop6 is not None


def test_targets_file_is_read_relative_to_the_site_file(tmp_path: Path) -> None:
    (tmp_path / "targets").mkdir()
    write(tmp_path, "targets: [203.0.113.7, 203.0.113.8, 203.0.113.9, "
                    "{address: '2001:db8::7', name: x}]\n", "targets/t.yaml")
    text = MINIMAL.replace(
        "targets: [203.0.113.1, 203.0.113.2, 203.0.113.3]", "targets_file: targets/t.yaml"
    )
    site = load_site(write(tmp_path, text))
    labels = [t.label for t in site.controller.probe.targets]
    assert labels == ["203.0.113.7", "203.0.113.8", "203.0.113.9", "x"]


# Each case: a change to MINIMAL, and the exact error it must produce.
INVALID = [
    (
        ('neighbor6: "2001:db8::1"', 'neighbor6: "fe80::1%eth0 announce route 2001:db8::/32"'),
        "site.yaml:7: controller.upstreams[0].neighbor6: 'fe80::1%eth0 announce route "
        "2001:db8::/32': no scope ID (%...) here; the interface has its own key",
    ),
    (
        ("{name: b, asn: 64502", '{communities: ["64500:1\\n"], name: b, asn: 64502'),
        "site.yaml:8: controller.upstreams[1].communities[0]: '64500:1\\n' is not a BGP "
        "community (expected A:B or A:B:C)",
    ),
    (
        (
            "local_address: 192.0.2.10}",
            "local_address: 192.0.2.10, "
            'neighbor6: "2001:db8::1", local_address6: "2001:db8::3"}',
        ),
        "site.yaml:9: controller.upstreams[2].neighbor6: '2001:db8::1' is already used by "
        "upstreams[0]",
    ),
    (
        ("neighbor: 192.0.2.5,", "neighbor: 192.0.2.300,"),
        "site.yaml:8: controller.upstreams[1].neighbor: '192.0.2.300' is not an IP address",
    ),
    (
        ("prefixes: [198.51.100.0/24", "prefixes: [198.51.100.1/24"),
        "site.yaml:3: prefixes[0]: '198.51.100.1/24' has host bits set",
    ),
    (
        ("{name: b, asn: 64502", "{name: a, asn: 64502"),
        "site.yaml:8: controller.upstreams[1].name: 'a' is already used by upstreams[0]",
    ),
    (
        ("name: c, asn: 64503", "name: c, asn: 64502"),
        "site.yaml:9: controller.upstreams[2].asn: '64502' is already used by upstreams[1]",
    ),
    (
        ("neighbor: 192.0.2.9,", "neighbor: 192.0.2.5,"),
        "site.yaml:9: controller.upstreams[2].neighbor: '192.0.2.5' is already used by "
        "upstreams[1]",
    ),
    (
        ("local_address: 192.0.2.10}", 'local_address: "2001:db8::10"}'),
        "site.yaml:9: controller.upstreams[2].local_address: '2001:db8::10' is IPv6 but neighbor "
        "is IPv4",
    ),
    (
        ('local_address6: "2001:db8::2"', 'local_address6: "192.0.2.99"'),
        "site.yaml:7: controller.upstreams[0].local_address6: '192.0.2.99' is not an IPv6 address",
    ),
    (
        ("  probe:\n", "  policy: {min_announcing_upstreams: 3}\n  probe:\n"),
        "site.yaml:10: controller.policy.min_announcing_upstreams: 3 must be below the number of "
        "upstreams with an IPv4 session (3), or a failed one could never be withdrawn",
    ),
    (
        (
            "  probe:\n",
            "  policy:\n    degraded: {loss_ratio: 0.9, action: prepend, prepend: 2}\n  probe:\n",
        ),
        "site.yaml:11: controller.policy.degraded.loss_ratio: 0.9 must be below "
        "failed.loss_ratio (0.8)",
    ),
    (
        ("  probe:\n", "  probes:\n"),
        "site.yaml:10: controller.probes: unknown key (did you mean 'probe'?)",
    ),
    (
        ("asn: 64500", "asn: lots"),
        "site.yaml:2: asn: 'lots' is not a whole number",
    ),
    (
        ("{name: b,", "{name: B!,"),
        "site.yaml:8: controller.upstreams[1].name: 'B!' is not a valid name (lower-case "
        "letters, digits, - and _; 1-32)",
    ),
]


@pytest.mark.parametrize(("change", "expected"), INVALID, ids=lambda v: str(v)[:40])
def test_each_mistake_has_its_exact_message(tmp_path: Path, change, expected) -> None:
    old, new = change
    assert old in MINIMAL
    path = write(tmp_path, MINIMAL.replace(old, new, 1))
    assert errors_of(path) == [expected.replace("site.yaml", str(path))]


def test_missing_key_points_at_the_parent(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("local_address: 192.0.2.6}", "}"))
    assert errors_of(path) == [
        f"{path}:8: controller.upstreams[1].local_address: required key is missing"
    ]


# A negative ASN, a neighbor that is not an address, a misspelt key: lines 2, 8 and 10.
THREE_MISTAKES = (
    MINIMAL.replace("asn: 64500", "asn: -1")
    .replace("neighbor: 192.0.2.5,", "neighbor: nowhere,")
    .replace("  probe:\n", "  prob:\n")
)


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, THREE_MISTAKES)
    errors = errors_of(path)
    assert len(errors) == 3
    assert [e.split(": ")[0] for e in errors] == [f"{path}:2", f"{path}:8", f"{path}:10"]


def test_duplicate_keys_are_reported(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "asn: 64999\n")
    assert errors_of(path) == [f"{path}:12: asn: duplicate key"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty"),
        ("# only a comment\n", "the file is empty"),
        ("- a\n- b\n", "1: expected a mapping of keys, got a list"),
        ("just words\n", "1: expected a mapping of keys, got a str"),
        ("site: [unclosed\n", "2: YAML syntax error: expected ',' or ']', but got '<stream end>'"),
        (
            "a: 1\n\tb: 2\n",
            "2: YAML syntax error: found character '\\t' that cannot start any token",
        ),
    ],
)
def test_unusable_files_get_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    sep = ":" if message[0].isdigit() else ": "
    assert errors_of(path) == [f"{path}{sep}{message}"]


def test_missing_file(tmp_path: Path) -> None:
    assert errors_of(tmp_path / "nope.yaml") == [f"{tmp_path / 'nope.yaml'}: no such file"]


def test_missing_targets_file_names_the_key(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        "targets: [203.0.113.1, 203.0.113.2, 203.0.113.3]", "targets_file: gone.yaml"
    )
    path = write(tmp_path, text)
    assert errors_of(path) == [
        f"{path}:11: controller.probe.targets_file: '{tmp_path / 'gone.yaml'}' does not exist"
    ]


# --- properties: the loader returns a Site or raises ConfigError, nothing else ------------

yaml_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.sampled_from(["192.0.2.1", "2001:db8::1", "198.51.100.0/24", "eth0", "64500:1", "0660"]),
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
KEYS = ["site", "asn", "prefixes", "agent", "controller", "metrics", "control", "state_dir"]


def _assert_loads_or_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(text)
    try:
        site = load_site(path)
    except ConfigError as exc:
        assert exc.errors and all(line.startswith(str(path)) for line in exc.errors)
    else:
        assert isinstance(site, Site)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), yaml_values, max_size=8))
def test_random_documents_never_crash_the_loader(tmp_path: Path, doc) -> None:
    _assert_loads_or_config_error(tmp_path, yaml.safe_dump(doc))


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_valid_configs_never_crash_the_loader(tmp_path: Path, data) -> None:
    doc = yaml.safe_load((PROBES / "example-site.yaml").read_text())
    doc["controller"]["probe"] = {"targets": ["203.0.113.1", "203.0.113.2", "203.0.113.3"]}
    # Walk to a random node and replace it with a random value (or delete it).
    node, key = doc, None
    for _ in range(data.draw(st.integers(1, 4))):
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = data.draw(st.sampled_from(keys))
        if isinstance(node[key], dict | list) and data.draw(st.booleans()):
            node = node[key]
            key = None
        else:
            break
    if key is not None:
        if data.draw(st.booleans()):
            node[key] = data.draw(yaml_values)
        else:
            del node[key]
    _assert_loads_or_config_error(tmp_path, yaml.safe_dump(doc))


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_random_text_never_crashes_the_loader(tmp_path: Path, text: str) -> None:
    _assert_loads_or_config_error(tmp_path, text)


# --- the command ---------------------------------------------------------------------------


def netwatch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "netwatch.cli", *args], capture_output=True, text=True, cwd=REPO
    )


def test_validate_accepts_every_shipped_file() -> None:
    files = [str(p) for p in sorted(PROBES.glob("*.yaml")) + sorted(PROBES.glob("targets/*.yaml"))]
    result = netwatch("config", "validate", *files)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": ok (") == len(files)


def test_validate_prints_three_mistakes_and_exits_65(tmp_path: Path) -> None:
    path = write(tmp_path, THREE_MISTAKES)
    good = LAB_SITE_DIR / "lab-site.yaml"
    result = netwatch("config", "validate", str(good), str(path))
    assert result.returncode == 65
    assert result.stderr.splitlines() == [
        f"{path}:2: asn: -1: input should be greater than or equal to 1",
        f"{path}:8: controller.upstreams[1].neighbor: 'nowhere' is not an IP address",
        f"{path}:10: controller.prob: unknown key (did you mean 'probe'?)",
    ]
    assert f"{good}: ok" in result.stdout


def test_validate_missing_file_exits_66(tmp_path: Path) -> None:
    result = netwatch("config", "validate", str(tmp_path / "nope.yaml"))
    assert result.returncode == 66
    assert result.stderr.strip() == f"{tmp_path / 'nope.yaml'}: no such file"
    assert "Traceback" not in result.stderr


def test_show_json_fills_defaults() -> None:
    result = netwatch("config", "show", str(LAB_SITE_DIR / "lab-site.yaml"), "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["controller"]["policy"]["min_announcing_upstreams"] == 2
    assert shown["agent"]["probe"]["method"] == "arp"
    assert shown["control"]["mode"] == "0660"


def test_help_and_version() -> None:
    assert netwatch("--help").returncode == 0
    version = netwatch("--version")
    assert version.returncode == 0 and version.stdout.startswith("netwatch ")
    assert netwatch().returncode == 64


def test_tcp_probes_need_a_port_inline_and_in_a_catalogue(tmp_path: Path) -> None:
    inline = MINIMAL.replace("  probe:\n", "  probe:\n    method: tcp\n")
    path = write(tmp_path, inline)
    assert errors_of(path)[0] == (
        f"{path}:12: controller.probe.targets[0].port: required when method is tcp"
    )
    (tmp_path / "t.yaml").write_text(
        "targets:\n  - {address: 203.0.113.1, port: 443}\n  - 203.0.113.2\n"
    )
    text = inline.replace(
        "targets: [203.0.113.1, 203.0.113.2, 203.0.113.3]", "targets_file: t.yaml"
    )
    path = write(tmp_path, text)
    assert errors_of(path) == [
        f"{tmp_path / 't.yaml'}:3: targets[1].port: required when controller.probe.method is tcp"
    ]


def test_one_site_file_serves_both_daemons_on_one_host(tmp_path: Path) -> None:
    site = load_site(write(tmp_path, MINIMAL))
    assert site.metrics.agent != site.metrics.controller
    assert site.control.agent != site.control.controller
    shared = MINIMAL + 'metrics: {agent: "127.0.0.1:9110", controller: "127.0.0.1:9110"}\n'
    assert errors_of(write(tmp_path, shared)) == [
        f"{tmp_path}/site.yaml:12: metrics.controller: "
        "must differ from metrics.agent (one per daemon)"
    ]
    old = MINIMAL + 'metrics: {listen: "127.0.0.1:9110"}\n'
    assert errors_of(write(tmp_path, old)) == [
        f"{tmp_path}/site.yaml:12: metrics.listen: unknown key (known keys: agent, controller)"
    ]


# Settings that would leave a daemon unable to protect something: each refused with its line.
PROTECTION = [
    (  # IPv6 prefix, 4 upstreams of which 2 with IPv6, minimum 2: IPv6 never withdrawn
        "prefixes: [198.51.100.0/24]", 'prefixes: [198.51.100.0/24, "2001:db8:100::/48"]',
        "controller.policy.min_announcing_upstreams: 2 must be below the number of upstreams "
        "with an IPv6 session (1)",
    ),
    (  # three targets, a quorum of four: no verdict ever
        "  probe:\n", "  probe:\n    min_targets: 4\n",
        "controller.upstreams[0].name: a has an IPv4 session but there are 3 IPv4 targets, "
        "fewer than min_targets (4)",
    ),
    (  # a lost probe recorded after the window: a blackhole never FAILED
        "  probe:\n", "  probe:\n    interval_ms: 1000\n    timeout_ms: 2000\n    window_s: 2\n",
        "controller.probe.timeout_ms: a probe times out after 2000 ms, not within window_s",
    ),
    (
        "  probe:\n", "  policy: {recovery_hold_s: .inf}\n  probe:\n",
        "controller.policy.recovery_hold_s: inf is not a finite number",
    ),
    (
        "  probe:\n", "  route_table_base: 250\n  probe:\n",
        "controller.route_table_base: 250..255 (two per upstream) includes the kernel's reserved "
        "table 253",
    ),
]

AGENT = """\
agent:
  uplinks:
    primary:   {interface: eth0, gateway: 100.64.1.1, gateway6: "fe80::1"}
    secondary: {interface: eth1, gateway: 100.64.2.1, gateway6: "fe80::1"}
  probe: {beyond: [203.0.113.9, "2001:db8:9::9"]}
"""
AGENT_PROTECTION = [
    (
        ', gateway6: "fe80::1"}\n  probe', "}\n  probe",
        "agent.uplinks.secondary.gateway6: required when the other uplink has one",
    ),
    (
        'gateway6: "fe80::1"', "gateway6: null",
        "agent.probe.beyond[1]: '2001:db8:9::9' is IPv6 but the uplinks have no gateway6",
    ),
    (
        "  probe: {", "  probe: {interval_ms: 50, timeout_ms: 80, ",
        "agent.probe.timeout_ms: 80 ms is longer than interval_ms (50)",
    ),
    (
        "  probe: {", "  route_table_base: 254\n  probe: {",
        "agent.route_table_base: 254..255 (one per uplink) includes the kernel's reserved table",
    ),
    (  # every confirmation lost on a busy LAN: a false failover after one lost probe
        "  probe: {", "  probe: {confirm_interval_ms: 2, ",
        "agent.probe.confirm_interval_ms: 2 ms is under 5 ms",
    ),
    (
        "  probe: {", "  probe: {interval_ms: 50, confirm_interval_ms: 60, ",
        "agent.probe.confirm_interval_ms: 60 ms is longer than the probe timeout (50 ms)",
    ),
    (
        "  probe: {", "  probe: {confirm_interval_ms: 1, ",
        "agent.probe.confirm_interval_ms: 1 ms is under 5 ms",
    ),
]


@pytest.mark.parametrize(("old", "new", "expected"), PROTECTION + [
    (old, new, expected) for old, new, expected in AGENT_PROTECTION
])
def test_protection_settings_are_refused(tmp_path: Path, old: str, new: str, expected: str):
    base = MINIMAL + AGENT
    assert old in base
    errors = errors_of(write(tmp_path, base.replace(old, new)))
    assert any(expected in e for e in errors), errors


# --- BGP session protection: graceful restart, TCP-MD5 password files, GTSM ---------------

SECRET = "Tr4nsit-A#secret"


def test_session_keys_default_to_graceful_restart_120_and_no_md5_or_gtsm(tmp_path: Path) -> None:
    site = load_site(write(tmp_path, MINIMAL))
    assert site.controller.bgp.graceful_restart_s == 120
    assert all(u.md5_password_file is None and not u.ttl_security
               for u in site.controller.upstreams)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0),
        ("4095", 4095),
        ("4096", "controller.bgp.graceful_restart_s: 4096: input should be less than or equal "
                 "to 4095"),
        ("-1", "controller.bgp.graceful_restart_s: -1: input should be greater than or equal "
               "to 0"),
    ],
)
def test_graceful_restart_time_fits_the_capability_12_bits(tmp_path: Path, value, expected):
    path = write(tmp_path, MINIMAL + f"  bgp: {{graceful_restart_s: {value}}}\n")
    if isinstance(expected, int):
        assert load_site(path).controller.bgp.graceful_restart_s == expected
    else:
        assert errors_of(path) == [f"{path}:12: {expected}"]


def _md5_site(tmp_path: Path, secret: str | bytes = SECRET, mode: int = 0o600) -> Path:
    (tmp_path / "keys").mkdir(exist_ok=True)
    key = tmp_path / "keys" / "a.key"
    key.write_bytes(secret if isinstance(secret, bytes) else secret.encode() + b"\n")
    key.chmod(mode)
    return write(tmp_path, MINIMAL.replace(
        'local_address6: "2001:db8::2"}',
        'local_address6: "2001:db8::2",\n       md5_password_file: keys/a.key, ttl_security: true}',
    ))


def test_the_password_is_read_relative_to_the_site_file_and_only_its_path_is_shown(
    tmp_path: Path, capsys
) -> None:
    from netwatch.cli import main
    from netwatch.config.secrets import read_md5_passwords

    path = _md5_site(tmp_path)
    site = load_site(path)
    assert site.controller.upstreams[0].ttl_security is True
    assert read_md5_passwords(path, site) == {"a": SECRET}  # the trailing newline is not in it
    assert main(["config", "show", str(path), "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["controller"]["upstreams"][0]["md5_password_file"] == "keys/a.key"
    assert SECRET not in out


@pytest.mark.parametrize(
    ("secret", "mode", "message"),
    [
        (SECRET, 0o640, "has mode 0640: group and others must have no access to a password"),
        (SECRET, 0o604, "has mode 0604: group and others must have no access to a password"),
        (SECRET, 0o620, "has mode 0620: group and others must have no access to a password"),
        ("", 0o600, "the password is empty"),
        ("x" * 81, 0o600, "the password is longer than 80 characters"),
        (b"line one\nline two\n", 0o600, "a character the ExaBGP config cannot carry"),
        ('has"quote', 0o600, "a character the ExaBGP config cannot carry"),
        ("back\\slash", 0o600, "a character the ExaBGP config cannot carry"),
        ("xq zv9", 0o600, "a character the ExaBGP config cannot carry"),
        ("caf\u00e9", 0o600, "a character the ExaBGP config cannot carry"),
    ],
)
def test_an_unusable_password_file_is_refused_with_its_line_and_never_its_content(
    tmp_path: Path, secret, mode, message
) -> None:
    from netwatch.config.secrets import read_md5_passwords

    path = _md5_site(tmp_path, secret, mode)
    with pytest.raises(ConfigError) as caught:
        read_md5_passwords(path, load_site(path))
    (error,) = caught.value.errors
    assert error.startswith(
        f"{path}:8: controller.upstreams[0].md5_password_file: '{tmp_path}/keys/a.key'"
    )
    assert message in error
    text = secret.decode() if isinstance(secret, bytes) else secret
    for word in filter(None, text.split()):
        assert word not in error.replace(str(tmp_path), "")


def test_a_missing_foreign_or_special_password_file_is_refused(tmp_path: Path) -> None:
    from netwatch.config.secrets import read_md5_passwords

    path = _md5_site(tmp_path)
    site = load_site(path)
    key = tmp_path / "keys" / "a.key"
    os.chown(key, 54321, 54321)
    with pytest.raises(ConfigError, match="owned by uid 54321: it must be owned by root"):
        read_md5_passwords(path, site)
    key.unlink()
    with pytest.raises(ConfigError, match=r"keys/a\.key' does not exist"):
        read_md5_passwords(path, site)
    key.mkdir()
    with pytest.raises(ConfigError, match=r"keys/a\.key' is not a regular file"):
        read_md5_passwords(path, site)


@pytest.mark.parametrize(("beyond", "expected"), [
    ('["203.0.113.1"]', "agent.probe.beyond[0]: '203.0.113.1' is one of the controller's probe "
                        "targets (on the internet)"),
    ('["192.0.2.53"]', "agent.probe.beyond[0]: '192.0.2.53' is outside our prefixes and "
                       "agent.probe.internal_prefixes"),
])
def test_beyond_targets_are_inside_our_network(tmp_path: Path, beyond: str, expected: str):
    text = MINIMAL + AGENT.replace('[203.0.113.9, "2001:db8:9::9"]', beyond).replace(
        'gateway6: "fe80::1"', "gateway6: null")
    errors = errors_of(write(tmp_path, text))
    assert any(expected in e for e in errors), errors


def test_a_beyond_target_in_our_prefixes_or_internal_ranges_is_fine(tmp_path: Path):
    agent = AGENT.replace(
        '{beyond: [203.0.113.9, "2001:db8:9::9"]}',
        "{beyond: [198.51.100.1, 100.64.0.1], internal_prefixes: [100.64.0.0/10]}",
    )
    agent = agent.replace('gateway6: "fe80::1"', "gateway6: null")
    site = load_site(write(tmp_path, MINIMAL + agent))
    assert [str(b) for b in site.agent.probe.beyond] == ["198.51.100.1", "100.64.0.1"]



def test_an_upstream_the_controller_cannot_probe_is_refused(tmp_path: Path) -> None:
    text = MINIMAL.replace("asn: 64502, interface: eb, ", "asn: 64502, ")
    assert errors_of(write(tmp_path, text)) == [
        f"{tmp_path}/site.yaml:8: controller.upstreams[1].interface: required key is missing"
    ]



def test_a_wide_internal_range_cannot_let_internet_targets_in(tmp_path: Path):
    agent = AGENT.replace(
        '{beyond: [203.0.113.9, "2001:db8:9::9"]}',
        "{beyond: [8.8.8.8], internal_prefixes: [0.0.0.0/0]}",
    ).replace('gateway6: "fe80::1"', "gateway6: null")
    errors = errors_of(write(tmp_path, MINIMAL + agent))
    assert any("agent.probe.internal_prefixes[0]: '0.0.0.0/0' is wider than /8" in e
               for e in errors), errors


def test_the_agents_and_the_controllers_probe_tables_and_marks_do_not_overlap(tmp_path: Path):
    agent = AGENT.replace(
        '{beyond: [203.0.113.9, "2001:db8:9::9"]}', "{beyond: [198.51.100.9]}"
    ).replace('gateway6: "fe80::1"', "gateway6: null")
    agent += "  route_table_base: 2000\n  fwmark_base: 0x4E581\n"
    errors = errors_of(write(tmp_path, MINIMAL + agent))
    assert any("agent.route_table_base: 2000..2001 overlaps the controller's 2000..2005" in e
               for e in errors), errors
    assert any("agent.fwmark_base: 320897..320898 overlaps the controller's" in e
               for e in errors), errors



def test_an_alertmanager_for_silences_is_an_http_url(tmp_path: Path):
    good = MINIMAL + "alertmanager: {url: 'http://127.0.0.1:9093', instance: {agent: srv1:9110}}\n"
    site = load_site(write(tmp_path, good))
    assert site.alertmanager.url == "http://127.0.0.1:9093"
    assert site.alertmanager.timeout_s == 2.0 and site.alertmanager.instance.agent == "srv1:9110"
    bad = MINIMAL + "alertmanager: {url: 'ftp://am'}\n"
    assert errors_of(write(tmp_path, bad)) == [
        f"{tmp_path}/site.yaml:12: alertmanager.url: 'ftp://am' is not an http(s) URL with a host"
    ]


def test_the_confirmation_pace_defaults_to_a_fifth_of_the_interval(tmp_path: Path):
    def agent_probe(settings: str):
        text = MINIMAL + AGENT.replace("  probe: {beyond: [203.0.113.9, \"2001:db8:9::9\"]}",
                                       "  probe: {" + settings.rstrip(", ") + "}")
        return load_site(write(tmp_path, text)).agent.probe

    assert agent_probe("interval_ms: 100, ").confirm_s == pytest.approx(0.02)
    assert agent_probe("interval_ms: 10, ").confirm_s == pytest.approx(0.005)  # the floor
    assert agent_probe("confirm_interval_ms: 0, ").confirm_s == 0  # off
