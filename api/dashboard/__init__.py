"""The admin dashboard and the Prometheus metrics of the control plane.

Untrusted, like everything outside the TEE workers and the key service: the
pages, their JSON and ``/metrics`` show metadata only (tenant ids, tasks, SLOs,
sizes, timings, variant ids, measurements), read from the store's typed
records and the replicas' telemetry (`infaas.telemetry`).

- `api.dashboard.routes`: pages, login sessions, JSON, static assets, ``/metrics``;
  `install_dashboard(app)` adds them to a `create_app` app;
- `api.dashboard.views`: what each page shows (pure functions);
- `api.dashboard.metrics`: the Prometheus collector;
- `api.dashboard.session`: signed, expiring session cookies for administrators.
"""

from api.dashboard.routes import install_dashboard as install_dashboard

__all__ = ["install_dashboard"]
