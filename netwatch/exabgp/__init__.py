"""ExaBGP: the text API (`protocol`, pure), the command bookkeeping (`sync`, pure) and the
configuration netwatch renders for it (`config`)."""
