"""The public transparency log: what the key service trusts, for anyone to check.

`merkle` (RFC 9162 hashing, inclusion and consistency proofs), `log` (the
key service's append-only log, its entries, signed tree heads, the log key),
`witness` (what tenants, owners and workers check: inclusion of what they rely
on, consistency with every head they saw) and `cli` (``infaas transparency``).
"""
