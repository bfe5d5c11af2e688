"""The Prometheus side of the agent: cache-state collector, instruments, endpoint.

``exporter`` computes the cache's state from a snapshot (``cache_state``),
serves it as metric families (``collector``), keeps the agent's own counters
(``metrics``, with ``evictions`` behind the churn counter) and serves the
registry over HTTP (``endpoint``).
"""
