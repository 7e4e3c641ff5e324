"""
Workers: C{workers = N} runs the listeners in N processes.

The process twistd runs (the I{control process}) keeps the control plane:
the live model of pools and servers, the health checks (run once, not once
per worker), the HA heartbeat and the admin listener. It serves no traffic.
It starts the workers (L{supervisor}), each a fresh Python running
L{child}, which serves every listener on a socket of its own opened with
C{SO_REUSEPORT} (the kernel spreads connections over the workers' sockets).

Between the control process and each worker is a channel (L{channel}, a
pair of pipes): the control process pushes every change of a server's
state, weight or health and every server the admin API adds or removes
(L{state}); a worker reports a server its passive checks take down, and
answers requests for its counters (L{counters}), which the control process
sums into its own model for the stats page, the JSON and the metrics.
A reload reaches every worker over the channel, which reloads its own
configuration as a single process does; a stop too. A worker that exits
unexpectedly is logged and started again, with a backoff.

  - L{channel}: the framing and the messages;
  - L{state}: server states, weights and health, pushed and applied;
  - L{counters}: a worker's counters, and their sum in the control process;
  - L{supervisor}: starting, restarting and stopping the workers;
  - L{control}: the control process's service tree;
  - L{worker}: a worker's service tree and its end of the channel;
  - L{child}: a worker process's entry point.
"""
