"""What both daemons share: logging, task supervision, the state store, the metrics listener."""
