"""The rehearsal lab: network namespaces, BIRD transit peers, ExaBGP, fault injection.

Modules: `site` (reads the site file), `topology` (pure: nodes, links, addresses, routes),
`netns` (iproute2 wrappers), `bird` (BIRD configs and birdc), `faults` (nftables faults),
`lab` (up / down / status orchestration), `announcer` (the temporary ExaBGP API process).
"""
