# syntax=docker/dockerfile:1
# The Hecate product image: the `hecate` command and nothing else (no lab, no dev tools, no
# tests). Run modes -- status and config checks, the daemon as the coordinator, a dry-run
# sidecar -- are in docs/container.md. Every install step is host/container/install.sh, which
# the test suite runs too. Needs BuildKit (the default builder) for the RUN --mount lines.

# Build stage: wheels of the product and its dependencies (the only stage that reaches the index).
FROM python:3.11.13-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY controller/ controller/
COPY host/container/install.sh /usr/local/sbin/hecate-image-install
RUN /usr/local/sbin/hecate-image-install wheels /src /wheels

# Runtime stage: the wheels installed offline into a venv; the wheels and the script are bind
# mounts, so neither (nor any pip cache) is left in a layer.
FROM python:3.11.13-slim-bookworm
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="hecate" \
      org.opencontainers.image.description="Power protection and staged bootstrap for bare-metal k3s clusters" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.13-slim-bookworm"
RUN --mount=type=bind,from=build,source=/wheels,target=/tmp/wheels \
    --mount=type=bind,source=host/container/install.sh,target=/tmp/install.sh \
    sh /tmp/install.sh venv /tmp/wheels /opt/hecate/venv \
    && sh /tmp/install.sh account /
ENV PATH="/opt/hecate/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1
# The read-only run modes need no privilege; the coordinator's daemon runs with --user 0 (docs/container.md).
USER 10001:10001
WORKDIR /var/lib/hecate
ENTRYPOINT ["hecate"]
CMD ["--help"]
