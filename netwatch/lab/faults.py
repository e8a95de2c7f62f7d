"""Fault injection for the lab: nftables tables `netwatch_fault` inside a node's namespace,
interface state, and the transits' BIRD daemons. Every active fault is recorded in the lab's
state file (key `faults`, id -> record) so `status` and `heal` know it.

Kinds and targets:
- link-down gwa|gwb|primary|secondary|eth0|eth1|tN: the far side of the veth goes down (the
  gateway side of an uplink, the transit side of a transit link): the near side loses carrier.
- gateway-silent gwa|gwb: the gateway drops everything on its srv-facing interface, ARP and
  ND included; the carrier stays up.
- gateway-blackhole gwa|gwb: the gateway answers ARP/ND/ping but forwards nothing.
- loss PCT NODE: random drop of PCT % of forwarded traffic (BGP sessions survive).
- link-loss PCT gwa|gwb: the uplink's link itself loses PCT % of the frames in each direction,
  whatever they carry (ARP, ND, pings to the gateway, forwarded traffic): a noisy uplink.
- latency MS NODE: netem delay; refused (exit 69) where the kernel has no netem.
- transit-blackhole tN: the transit keeps its BGP session but drops traffic towards inet.
- internet-blackhole inet: inet drops everything the transits bring it but BGP and ND: the
  targets go dark through every transit at the same instant (a common cause, as when the
  fault is ours or the targets'), where four transit-blackholes land one after the other.
- session-reset tN: BIRD restarts its sessions to edge (one-shot, not recorded).
- transit-down tN: the transit's BIRD stops; heal starts it again.
- md5-mismatch tN: the transit's BIRD gets a wrong TCP-MD5 password (BIRD restarts its
  sessions to edge on the reconfiguration): they stay down, the kernel drops every segment
  (TcpExtTCPMD5Failure); heal gives the right one back. Only on a transit with a password.
- full-table tN [COUNT]: the transit sends edge COUNT (default 100,000) IPv4 routes, as a
  transit that ignored "default route only" would; heal takes them back.
"""

from __future__ import annotations

import subprocess
import time

from netwatch import exitcodes
from netwatch.config.secrets import write_private
from netwatch.lab import bird, netns
from netwatch.lab.handle import Lab, LabError, stop_pidfile
from netwatch.lab.topology import GATEWAYS, route_commands

KINDS = (
    "link-down",
    "gateway-silent",
    "gateway-blackhole",
    "loss",
    "link-loss",
    "latency",
    "transit-blackhole",
    "internet-blackhole",
    "session-reset",
    "transit-down",
    "md5-mismatch",
    "full-table",
)
TABLE = "netwatch_fault"
FULL_TABLE_ROUTES = 100_000
WRONG_PASSWORD = "netwatch-lab-wrong-password"
# Faults that live in a transit's BIRD config: applying or healing one re-renders the config
# with every such fault still active on that transit and reconfigures BIRD.
_CONFIG_FAULTS = ("md5-mismatch", "full-table")


def _nft(lab: Lab, node: str, script: str) -> None:
    netns.run(netns.exec_argv(lab.ns(node), ["nft", "-f", "-"]), stdin=script)


def _chain_script(chain: str, hook: str, rules: list[str], family: str = "inet") -> str:
    body = "\n".join(f"    {r}" for r in rules)
    return (
        f"table {family} {TABLE} {{\n  chain {chain} {{\n"
        f"    type filter hook {hook} priority -10; policy accept;\n{body}\n  }}\n}}\n"
    )


def _delete_chains(lab: Lab, node: str, chains: list[tuple[str, str]]) -> None:
    """Delete the (family, chain) pairs, then every now-empty `netwatch_fault` table."""
    for family, chain in chains:
        netns.run(
            netns.exec_argv(lab.ns(node), ["nft", "delete", "chain", family, TABLE, chain]),
            check=False,
        )
    for family in ("inet", "arp"):
        listing = netns.run(
            netns.exec_argv(lab.ns(node), ["nft", "list", "table", family, TABLE]), check=False
        )
        if listing.returncode == 0 and "chain" not in listing.stdout:
            netns.run(
                netns.exec_argv(lab.ns(node), ["nft", "delete", "table", family, TABLE]),
                check=False,
            )


def _transit(lab: Lab, target: str):
    try:
        return lab.topology().transit(target)
    except KeyError:
        raise LabError(f"{target!r} is not a transit of lab {lab.name}", exitcodes.USAGE) from None


def _gateway(target: str) -> str:
    aliases = {"primary": "gwa", "secondary": "gwb", "eth0": "gwa", "eth1": "gwb"}
    gw = aliases.get(target, target)
    if gw not in GATEWAYS:
        raise LabError(
            f"{target!r} is not a gateway (gwa, gwb, primary, secondary)", exitcodes.USAGE
        )
    return gw


def _percent(opts: list[str]) -> int:
    try:
        pct = int(opts[0])
    except (IndexError, ValueError):
        raise LabError(
            "loss needs a percentage: `lab fault loss PCT NODE`", exitcodes.USAGE
        ) from None
    if not 0 < pct <= 100:
        raise LabError(f"loss {pct}: the percentage must be 1..100", exitcodes.USAGE)
    return pct


def _routing_node(lab: Lab, target: str) -> str:
    topo = lab.topology()
    node = _gateway(target) if target in ("primary", "secondary", "eth0", "eth1") else target
    if node not in topo.routing_nodes or node == "inet":
        raise LabError(
            f"{target!r}: loss and latency apply to a gateway or transit", exitcodes.USAGE
        )
    return node


def apply(lab: Lab, kind: str, target: str, *opts: str) -> dict:
    """Inject fault `kind` on `target`; returns its record. Raises LabError."""
    if (kind in ("loss", "link-loss", "latency") and target.isdigit() and opts
            and not opts[0].isdigit()):
        target, opts = opts[0], [target, *opts[1:]]  # `loss PCT NODE` and `loss NODE PCT` both
    if kind not in KINDS:
        raise LabError(f"unknown fault kind {kind!r} (one of: {', '.join(KINDS)})", exitcodes.USAGE)
    if kind == "session-reset":
        t = _transit(lab, target)
        for proto in ("edge4", "edge6"):
            lab.birdc(t.name, f"restart {proto}")
        return {"kind": kind, "target": t.name, "oneshot": True}
    state = lab.read_state()
    fault_id = f"{kind}:{target}"
    if fault_id in state.get("faults", {}):
        raise LabError(f"fault {fault_id} is already active (heal it first)", exitcodes.USAGE)
    record = _inject(lab, kind, target, list(opts))
    record.update(kind=kind, target=target, since=time.time())
    state = lab.read_state()
    state.setdefault("faults", {})[fault_id] = record
    lab.write_state(state)
    return record


def _inject(lab: Lab, kind: str, target: str, opts: list[str]) -> dict:
    if kind == "link-down":
        topo = lab.topology()
        try:
            link = topo.link(target)
        except KeyError:
            raise LabError(
                f"{target!r} is not a link (gwa, gwb, primary, secondary, t1..)", exitcodes.USAGE
            ) from None
        far = link.b
        netns.batch(lab.ns(far.node), [f"link set {far.name} down"])
        return {"node": far.node, "ifname": far.name}
    if kind == "gateway-silent":
        gw = _gateway(target)
        _nft(
            lab,
            gw,
            _chain_script("silent_in", "input", ['iifname "srv" drop'])
            + _chain_script("silent_fwd", "forward", ['iifname "srv" drop', 'oifname "srv" drop'])
            + _chain_script("silent_out", "output", ['oifname "srv" drop'])
            + _chain_script("silent_arp_in", "input", ['meta iifname "srv" drop'], "arp")
            + _chain_script("silent_arp_out", "output", ['meta oifname "srv" drop'], "arp"),
        )
        return {
            "node": gw,
            "chains": [
                ["inet", "silent_in"],
                ["inet", "silent_fwd"],
                ["inet", "silent_out"],
                ["arp", "silent_arp_in"],
                ["arp", "silent_arp_out"],
            ],
        }
    if kind == "link-loss":
        gw = _gateway(target)
        pct = _percent(opts)
        drop = f"numgen random mod 100 < {pct} drop"
        _nft(
            lab,
            gw,
            _chain_script("lossy_in", "input", [f'iifname "srv" {drop}'])
            + _chain_script("lossy_fwd", "forward", [f'iifname "srv" {drop}',
                                                     f'oifname "srv" {drop}'])
            + _chain_script("lossy_out", "output", [f'oifname "srv" {drop}'])
            + _chain_script("lossy_arp_in", "input", [f'meta iifname "srv" {drop}'], "arp")
            + _chain_script("lossy_arp_out", "output", [f'meta oifname "srv" {drop}'], "arp"),
        )
        return {
            "node": gw,
            "percent": pct,
            "chains": [
                ["inet", "lossy_in"],
                ["inet", "lossy_fwd"],
                ["inet", "lossy_out"],
                ["arp", "lossy_arp_in"],
                ["arp", "lossy_arp_out"],
            ],
        }
    if kind == "gateway-blackhole":
        gw = _gateway(target)
        _nft(lab, gw, _chain_script("blackhole_fwd", "forward", ["drop"]))
        return {"node": gw, "chains": [["inet", "blackhole_fwd"]]}
    if kind == "transit-blackhole":
        t = _transit(lab, target)
        _nft(lab, t.name, _chain_script("tblackhole_fwd", "forward", ['oifname "inet" drop']))
        return {"node": t.name, "chains": [["inet", "tblackhole_fwd"]]}
    if kind == "internet-blackhole":
        if target != "inet":
            raise LabError(f"{target!r}: internet-blackhole applies to inet", exitcodes.USAGE)
        drop = [  # BGP and neighbour discovery live on: a quiet blackhole, not a cut
            "tcp dport 179 accept", "tcp sport 179 accept",
            "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept",
            'iifname != "lo" drop',
        ]
        _nft(lab, "inet", _chain_script("iblackhole_in", "input", drop)
             + _chain_script("iblackhole_fwd", "forward", drop))
        return {"node": "inet", "chains": [["inet", "iblackhole_in"], ["inet", "iblackhole_fwd"]]}
    if kind == "loss":
        node = _routing_node(lab, target)
        pct = _percent(opts)
        _nft(
            lab,
            node,
            _chain_script(
                "loss_fwd",
                "forward",
                ["drop" if pct == 100 else f"numgen random mod 100 < {pct} drop"],
            ),
        )
        return {"node": node, "percent": pct, "chains": [["inet", "loss_fwd"]]}
    if kind == "latency":
        node = _routing_node(lab, target)
        try:
            delay_ms = int(opts[0])
        except (IndexError, ValueError):
            raise LabError(
                "latency needs milliseconds: `lab fault latency MS NODE`", exitcodes.USAGE
            ) from None
        # Only on the interfaces away from edge, so the session to edge keeps its timing.
        ifname = "inet" if node.startswith("t") else "srv"
        proc = netns.run(
            netns.exec_argv(
                lab.ns(node),
                ["tc", "qdisc", "add", "dev", ifname, "root", "netem", "delay", f"{delay_ms}ms"],
            ),
            check=False,
        )
        if proc.returncode != 0:
            raise LabError(
                f"latency needs the kernel's netem qdisc, which this kernel lacks "
                f"({proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'tc failed'})",
                exitcodes.UNAVAILABLE,
            )
        return {"node": node, "ifname": ifname, "delay_ms": delay_ms}
    if kind == "transit-down":
        t = _transit(lab, target)
        if not stop_pidfile(lab.pidfile(t.name), "bird"):
            raise LabError(f"BIRD of {t.name} is not running", exitcodes.FAILURE)
        return {"node": t.name}
    if kind == "md5-mismatch":
        t = _transit(lab, target)
        if not t.md5:
            raise LabError(
                f"{t.name} has no TCP-MD5 password (md5_password_file) to get wrong",
                exitcodes.USAGE,
            )
        record = {"node": t.name}
        _reconfigure_transit(lab, t.name, add={kind: record})
        return record
    if kind == "full-table":
        t = _transit(lab, target)
        try:
            count = int(opts[0]) if opts else FULL_TABLE_ROUTES
        except ValueError:
            raise LabError(
                "full-table takes a number of routes: `lab fault full-table tN [COUNT]`",
                exitcodes.USAGE,
            ) from None
        if not 1 <= count <= bird.FULL_TABLE_MAX:
            raise LabError(f"full-table {count}: 1..{bird.FULL_TABLE_MAX} routes", exitcodes.USAGE)
        record = {"node": t.name, "routes": count}
        _reconfigure_transit(lab, t.name, add={kind: record})
        return record
    raise LabError(f"unknown fault kind {kind!r}", exitcodes.USAGE)


def _reconfigure_transit(
    lab: Lab, node: str, add: dict | None = None, remove: str | None = None
) -> None:
    """Rewrite `node`'s BIRD config with its active config faults (plus `add`, minus the
    kind `remove`) and make BIRD load it. A changed password makes BIRD restart the sessions
    to edge; a changed export filter re-exports over the running sessions."""
    active = {
        r["kind"]: r
        for r in lab.read_state().get("faults", {}).values()
        if r.get("node") == node and r.get("kind") in _CONFIG_FAULTS
    }
    active.update(add or {})
    active.pop(remove, None)
    text = lab.transit_bird_config(
        node,
        password=WRONG_PASSWORD if "md5-mismatch" in active else None,
        full_table=active.get("full-table", {}).get("routes", 0),
    )
    write_private(lab.run_dir / f"{node}.bird.conf", text)
    try:
        reply = lab.birdc(node, "configure")
    except subprocess.CalledProcessError as exc:
        raise LabError(f"{node}: birdc configure failed: {exc.stderr or exc.stdout}",
                       exitcodes.SOFTWARE) from None
    if "Reconfigured" not in reply and "Reconfiguration in progress" not in reply:
        raise LabError(f"{node}: BIRD refused its new config: {reply.strip()}", exitcodes.SOFTWARE)


def _undo(lab: Lab, record: dict) -> None:
    kind, node = record["kind"], record["node"]
    if record.get("chains"):
        _delete_chains(lab, node, [tuple(c) for c in record["chains"]])
    if kind == "link-down":
        netns.batch(lab.ns(node), [f"link set {record['ifname']} up"])
        # The kernel drops link-local addresses (fe80::1 on a gateway) on link down.
        end = next(
            e
            for link in lab.topology().links
            for e in (link.a, link.b)
            if e.node == node and e.name == record["ifname"]
        )
        netns.batch(
            lab.ns(node),
            [
                f"addr replace {a} dev {end.name}" + (" nodad" if ":" in a else "")
                for a in end.addrs
            ],
        )
        # Routes through a downed interface are flushed by the kernel: put the node's back.
        netns.batch(lab.ns(node), route_commands(lab.topology(), node), force=True)
    elif kind == "latency":
        netns.run(
            netns.exec_argv(lab.ns(node), ["tc", "qdisc", "del", "dev", record["ifname"], "root"]),
            check=False,
        )
    elif kind == "transit-down":
        conf = (lab.run_dir / f"{node}.bird.conf").read_text()
        netns.run(lab.start_bird(node, conf))
    elif kind in _CONFIG_FAULTS:
        _reconfigure_transit(lab, node, remove=kind)


def heal(lab: Lab, target: str | None = None) -> list[str]:
    """Undo the active faults on `target` (a fault's target or node), or all of them.
    Returns the healed fault ids."""
    state = lab.read_state()
    faults = state.get("faults", {})
    healed = []
    for fault_id, record in list(faults.items()):
        if target is not None and target not in (record.get("target"), record.get("node")):
            continue
        _undo(lab, record)
        healed.append(fault_id)
        state = lab.read_state()
        state.get("faults", {}).pop(fault_id, None)
        lab.write_state(state)
    return healed
