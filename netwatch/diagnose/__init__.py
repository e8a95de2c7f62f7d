"""Per-transit path diagnosis: `netwatch diagnose upstream NAME`.

- `analysis` (pure): probe replies grouped into hops (address, RTT, loss), the hop where loss
  starts, the verdict, and the report as text (side by side) and JSON;
- `tracer`: the `Tracer` port and its adapter: ICMP echo built and dissected with scapy, sent
  on raw sockets that carry the upstream's probe fwmark, so the kernel routes them through
  that upstream's probe table (the controller installs one per upstream and family);
- `run`: the upstream's probe path from the site file, the healthy upstream to compare with,
  the check that the mark really leads through the upstream, and the tracer run.
"""
