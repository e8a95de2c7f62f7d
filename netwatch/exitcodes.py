"""Exit codes with a meaning (sysexits.h), shared by every command.

The operator commands (status, failover, upstream, overrides, override, events) exit 0 when
the daemon did it (a read: when any daemon answered), 1 not_found, 3 refused by a safety rule,
64 a wrong command line, 65/66 a bad or missing site file, 69 the daemon is unreachable,
70 internal (a daemon's bug), 75 the daemon answered unavailable (nothing changed) or a write
went out and its answer never came (outcome unknown: check `netwatch overrides`), 77
permission denied.
"""

OK = 0
FAILURE = 1  # the command ran and reports a negative answer (e.g. a check failed, or a
#               daemon answered not_found: no such override or upstream)
REFUSED = 3  # a daemon's safety rule refused the request (the message says which; a drain
#              that breaks the announcement interlock may be forced with --force)
USAGE = 64  # EX_USAGE: the command line is wrong (or a daemon found the request malformed)
DATAERR = 65  # EX_DATAERR: an input file (site config, playbook) is invalid
NOINPUT = 66  # EX_NOINPUT: an input file is missing or unreadable
UNAVAILABLE = 69  # EX_UNAVAILABLE: a needed program or service is missing (bird2, exabgp),
#                   or a netwatch daemon does not answer on its control socket
SOFTWARE = 70  # EX_SOFTWARE: an internal error (a bug): the traceback is logged
OSERR = 71  # EX_OSERR: the operating system refused (netlink, namespaces)
CANTCREAT = 73  # EX_CANTCREAT: cannot create an output (a lab of that name exists)
TEMPFAIL = 75  # EX_TEMPFAIL: try again later (a lab did not converge in time, a daemon
#                answered unavailable); or a write was sent and no answer came in time: its
#                outcome is unknown (the message says so: check `netwatch overrides`)
NOPERM = 77  # EX_NOPERM: needs root; or the control socket, or the daemon, refused our user
CONFIG = 78  # EX_CONFIG: the environment is misconfigured
