# Two stages: the build stage installs the gateway and its dependencies (all binary wheels) into
# a virtual environment made without pip; the runtime stage copies only that environment, so
# the image holds no source tree, no build files and no second copy of pip.
FROM python:3.11-slim AS build

WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
# Versions come from pyproject.toml's ranges; the project keeps no lock file.
# hadolint ignore=DL3013
RUN python -m venv --without-pip /opt/venv \
    && pip --python /opt/venv/bin/python install --no-cache-dir ".[redis]"


FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    GATEWAY_CONFIG=/etc/gateway/gateway.toml

COPY --from=build /opt/venv /opt/venv
COPY gateway.toml.example /etc/gateway/gateway.toml.example
RUN useradd --system --uid 10001 --no-create-home gateway

# A numeric user: runtimes that check "runAsNonRoot" can tell it is not root.
USER 10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/__gateway/health', timeout=2).status == 200 else 1)"]

# Mount your config at /etc/gateway/gateway.toml (see gateway.toml.example and
# docs/configuration.md). Audit events go to stdout unless [audit] sink says otherwise.
CMD ["gateway", "serve", "--host", "0.0.0.0", "--port", "8080"]
