"""The control API of both daemons: what operators see and force, over a Unix socket.

- `protocol` (pure): the wire format, the commands and their arguments, the status shapes;
- `leases` (pure): overrides as leases with who, why and an expiry, in a `LeaseBook`;
- `overrides` (pure): a write command applied to a lease book;
- `store`: the lease book in the daemon's state_dir (atomic, fsync; a damaged file is set
  aside, never fatal);
- `keeper`: a daemon's overrides kept: loaded, applied (with the daemon's safety check),
  expired, saved, audited;
- `audit`: the append-only audit log (JSON lines, fsync per record, rotated by size);
- `server`: the asyncio Unix-socket server (SO_PEERCRED, limits, timeouts);
- `client`: the CLI's small synchronous client.

Nothing is imported here, so the pure modules load without asyncio or sockets.
"""
