"""The TEE worker: attested key fetch, in-memory decryption, packing, batching, sealing.

Entry points (import them from their modules; this package imports nothing
heavy so that, e.g., the packer can be used without onnxruntime):

* `enclave_workers.deployment.build_infer_app(settings, keyservice_url)`: the
  Ray Serve "infer" application (route prefix ``/v1/infer``); handle methods
  ``prepare_model(model_id) -> JobStatus`` and ``status() -> dict``;
* `enclave_workers.measurement.worker_measurement(settings)`: the measurement
  the key service must allow for these workers;
* `enclave_workers.runtime.WorkerRuntime`: the request path without Ray;
* `enclave_workers.preparation.prepare_model`: generate, profile and register
  the variants of a sealed model, the model's own work in a child process
  under memory and time limits (`enclave_workers.sandbox`);
* `enclave_workers.endpoint.serve_app` / `create_worker_app`: the HTTP endpoint.
"""
