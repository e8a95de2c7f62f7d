"""The uplink agent: one per server. `decision` (pure) decides, `daemon` gathers and acts."""
