"""The shared vocabulary and value rules of every netwatch package. Pure: no I/O."""
