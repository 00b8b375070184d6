# syntax=docker/dockerfile:1
# infaas's container image: one image for every Ray node of a KubeRay cluster
# (deploy/k8s/rayservice.yaml), head and TEE workers alike. Only `pip install .` of this
# repository on a pinned Python base; no model, key or data is baked in (the zoo, the
# sealed artifacts and the store live on the cluster's volume and Redis).
#
#   docker build -t REGISTRY/infaas:0.1.0 .
#
# Not built in CI (no image builder there): tests/contract/test_deploy_manifests.py lints
# this file and checks it against the manifest.
FROM python:3.11.7-slim-bookworm

# KubeRay's exec health probes (the form it uses for some Ray versions) call wget;
# nothing else comes from Debian
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget=1.21.3-1+deb12u1 \
    && rm -rf /var/lib/apt/lists/*

# a numeric, unprivileged user (uid 1000, as in Ray's own images): the pods' runAsNonRoot
# can only be checked by the kubelet against a numeric USER
RUN groupadd --gid 1000 ray \
    && useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash ray

WORKDIR /opt/infaas
COPY pyproject.toml README.md ./
COPY infaas ./infaas
COPY variants ./variants
COPY profiler ./profiler
COPY scheduler ./scheduler
COPY enclave_workers ./enclave_workers
COPY api ./api
COPY configs ./configs
RUN pip install --no-cache-dir . \
    && mkdir -p /var/lib/infaas \
    && chown 1000:1000 /var/lib/infaas

# runtimes' telemetry stays off (the workers switch it off too, before importing them)
ENV ORT_DISABLE_TELEMETRY=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER 1000:1000
WORKDIR /home/ray
# KubeRay replaces the command with its `ray start`; run alone, the image says what it has
CMD ["infaas", "--help"]
