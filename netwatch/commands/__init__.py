"""Command groups of the `netwatch` CLI, one module each."""
