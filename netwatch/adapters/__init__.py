"""I/O adapters: netlink, probes, ExaBGP pipe, metrics, control socket. No decisions here."""
