# order-gateway: `order-gateway serve` as a non-root process, settings from
# /etc/order-gateway/gateway.yaml (the k8s ConfigMap) and GATEWAY_* variables.
# Build: docker build -t order-gateway:0.1.0 .

# -- build stage: wheels and a venv, with the compiler some wheels may need -----------
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY upstreams ./upstreams
RUN pip install --no-compile .

# -- final stage: the venv only; no compiler, no pip cache, no sources ----------------
FROM python:3.11.11-slim-bookworm
RUN groupadd --gid 10001 gateway && \
    useradd --uid 10001 --gid gateway --no-create-home --shell /usr/sbin/nologin gateway
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    GATEWAY_CONFIG=/etc/order-gateway/gateway.yaml
USER 10001:10001
EXPOSE 8080
# Exec form: SIGTERM reaches the gateway itself, which drains and exits 0.
ENTRYPOINT ["order-gateway", "serve"]
