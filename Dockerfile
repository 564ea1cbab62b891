FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEWAY_CONFIG=/etc/gateway/gateway.toml

WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install --no-cache-dir ".[redis]" \
    && useradd --system --uid 10001 --no-create-home gateway \
    && mkdir -p /etc/gateway
COPY gateway.toml.example /etc/gateway/gateway.toml.example

USER gateway
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD python -c "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/__gateway/health', timeout=2).status == 200 else 1)"

# Mount your config at /etc/gateway/gateway.toml (see gateway.toml.example).
CMD ["gateway", "serve", "--host", "0.0.0.0", "--port", "8080"]
