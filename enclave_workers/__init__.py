"""enclave_workers package."""
