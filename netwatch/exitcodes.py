"""Exit codes with a meaning (sysexits.h), shared by every command."""

OK = 0
FAILURE = 1  # the command ran and reports a negative answer (e.g. a check failed)
USAGE = 64  # EX_USAGE: the command line is wrong
DATAERR = 65  # EX_DATAERR: an input file (site config, playbook) is invalid
NOINPUT = 66  # EX_NOINPUT: an input file is missing or unreadable
UNAVAILABLE = 69  # EX_UNAVAILABLE: a needed program or service is missing (bird2, exabgp)
SOFTWARE = 70  # EX_SOFTWARE: an internal error (a bug): the traceback is logged
OSERR = 71  # EX_OSERR: the operating system refused (netlink, namespaces)
CANTCREAT = 73  # EX_CANTCREAT: cannot create an output (a lab of that name exists)
TEMPFAIL = 75  # EX_TEMPFAIL: try again later (a lab did not converge in time)
NOPERM = 77  # EX_NOPERM: needs root
CONFIG = 78  # EX_CONFIG: the environment is misconfigured
