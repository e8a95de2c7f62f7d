"""Probes over raw sockets: batched ARP, ND and ICMP echo (`raw`), async ICMP (`icmp`), TCP."""
