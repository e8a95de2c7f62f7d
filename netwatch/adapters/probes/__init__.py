"""Probes: batched ARP, ND and ICMP echo over raw sockets (`raw`, the agent's); ICMP echo on the
asyncio loop (`icmp`) and TCP SYN (`tcp`), the controller's."""
