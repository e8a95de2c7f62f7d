"""The rehearsal lab: network namespaces, BIRD transit peers, ExaBGP, fault injection.

Modules, each importing only those listed before it: `topology` (pure: nodes, links,
addresses, routes), `netns` (iproute2 wrappers), `bird` (BIRD configs and birdc), `handle`
(one lab by name: paths, namespaces, daemons), `faults` (nftables faults), `lifecycle` (up,
down, status). The lab's own site file ships in `site/`.
"""
