"""Telemetry: per-request metadata aggregated per replica, flushed to the store, read back.

Only metadata ever enters here (tenant id, task, SLO, variant id, timings, sizes,
error codes): the logs, the metrics and the dashboard are untrusted.

Where live data comes from
--------------------------
Several processes serve: worker replicas (``/v1/infer``), the key service and
the control plane that shows it all. Each serving process keeps a `Recorder`
(`infaas.telemetry.recorder`): counters in memory, updated on the request path
under a lock (a few dict operations, no I/O, no allocation beyond a new
series). A `Flusher` thread (`infaas.telemetry.flusher`) writes the recorder's
snapshot to the metadata store every second when something changed, and at
least every `HEARTBEAT_S` as a heartbeat — off the request path. The control
plane's `TelemetryReader` (`infaas.telemetry.reader`) lists the namespace,
merges the replicas' records (cached for a second) and serves the dashboard and
``/metrics`` from the merge. The record formats both sides agree on are in
`infaas.telemetry.records`; the autoscaler's decision log in
`infaas.telemetry.events`.

Why the store rather than Serve handles calling ``status()``: a handle call
reaches one replica chosen by the router, not each of them; the store sees
every replica, works unchanged across nodes with Redis, keeps the counters of
a replica that died (so totals never go backwards), and costs a request
nothing.

Logs are their own concept: `infaas.logs`. Every answered or refused
inference request is one line on the recorder's ``requests`` logger
(``infaas.telemetry.recorder.requests``) with its request id, tenant, task,
chosen variant, scheduler decision time and latency.
"""
