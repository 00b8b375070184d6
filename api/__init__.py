"""The REST control plane of infaas and its Ray Serve composition.

- `api.app.create_app(settings, ...)`: the FastAPI control plane (models, jobs,
  tasks, tenants, health), everything but inference;
- `api.deps`: what routes depend on (`Annotated[..., Depends(...)]` aliases);
  errors, bearer tokens and body limits are the shared HTTP edge's (`infaas.edge`);
- `api.serve`: the Serve applications (key service, control, the workers' infer app);
- `api.autoscaler`: the autoscaler's control loop and its Serve application;
- `api.bootstrap`: the first start of `infaas serve` (zoo owner, demo tenant);
- `api.command`: `infaas serve` itself.
"""
