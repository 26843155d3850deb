"""The daemon: the store served over a Unix socket.

`server` accepts connections and runs the daemon's life (start-up in `startup`, shutdown in
`shutdown`, both with `progress` lines); `peers` decides who may connect; `dispatch` answers
each request through its handlers (`data_ops`, `plan_ops`, `admin_ops`) within the
connection's namespace binding (`scope`); `metrics` exports Prometheus figures; `assembly`
builds the store a config describes (for embedded mode too); `launch` starts a daemon as a
subprocess, for tests, benchmarks and scripts.
"""
