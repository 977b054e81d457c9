# syntax=docker/dockerfile:1
# GPT Image Hub: one image for `gih serve` (the default CMD), `gih worker` and `gih db upgrade`.
#   docker build -t gpt-image-hub:latest .
# Both stages use the same base so the venv's interpreter path (/usr/local/bin/python3.11) exists
# in the final stage too.
ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: install the package and its dependencies into /opt/venv ---------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md alembic.ini ./
COPY app/ app/
COPY worker/ worker/
COPY migrations/ migrations/
RUN pip install --no-cache-dir .

# --- final: the venv only; no compilers, no pip cache, no sources --------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="GPT Image Hub" \
      org.opencontainers.image.description="Self-hostable, credit-metered image-generation API (gih serve / gih worker)" \
      org.opencontainers.image.version="0.1.0"

RUN groupadd --system --gid 10001 gih \
    && useradd --system --uid 10001 --gid gih --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin gih \
    && mkdir -p /app/data \
    && chown -R gih:gih /app

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GIH_HOST=0.0.0.0 \
    GIH_PORT=8000

WORKDIR /app
USER gih

EXPOSE 8000

# Liveness of `gih serve`. The compose file overrides it for the worker (`gih worker --check`),
# and for the API with /readyz.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request,os; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"GIH_PORT\",\"8000\")}/healthz', timeout=2)"]

CMD ["gih", "serve"]
