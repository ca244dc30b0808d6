"""The platform: API keys, rate limits, the usage ledger, budgets and retention.

It implements the gateway's seams (:mod:`kakehashi.gateway.context`) on a SQL database
(SQLite by default, PostgreSQL to share it between replicas) and, for limits shared by several
replicas, Redis. :class:`~kakehashi.platform.runtime.Platform` builds and owns all of it.
"""
