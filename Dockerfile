# syntax=docker/dockerfile:1
#
# opspush: WebSocket push service image.
#   docker build -t opspush:local .
#   docker run --rm -e DATABASE_URL=... -e OPSPUSH_SECRET=... -p 8000:8000 opspush:local
#
# Two stages: the builder creates a virtualenv in /opt/venv (dependencies first,
# in their own cached layer; the project itself last), the runtime stage copies
# only that venv plus the SQL migrations. No compiler is installed in either
# stage: every dependency ships manylinux wheels for CPython 3.12 on amd64/arm64.
# No PostgreSQL is embedded: the `embedded` extra is not installed, DATABASE_URL
# must point at a real server.

ARG PYTHON_IMAGE=python:3.12-slim

############################ builder ############################
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# 1) Runtime dependencies only, derived from pyproject.toml: this layer is
#    rebuilt when the dependency list changes, not when the code does.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

# 2) The project itself (no deps: they are already there). sql/ and static/ are package
#    data of the wheel; the runtime stage also keeps a copy under /app (OPSPUSH_*_DIR).
COPY README.md ./
COPY server ./server
COPY sql ./sql
COPY static ./static
RUN pip install --no-deps . \
    && python -c "import opspush.commands.cli"

############################ runtime ############################
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="opspush" \
      org.opencontainers.image.description="WebSocket push service for the operations console"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OPSPUSH_SQL_DIR=/app/sql \
    OPSPUSH_STATIC_DIR=/app/static \
    OPSPUSH_HOST=0.0.0.0 \
    OPSPUSH_PORT=8000

# Fixed numeric ids so orchestrators can check runAsNonRoot / file ownership.
RUN groupadd --system --gid 10001 opspush \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
               --shell /usr/sbin/nologin opspush

COPY --from=build /opt/venv /opt/venv

# Read-only application data, owned by root: the service never writes here.
WORKDIR /app
COPY sql/ /app/sql/
COPY static/ /app/static/
COPY deploy/healthcheck.py /app/healthcheck.py

USER 10001:10001
EXPOSE 8000

# Liveness only (/healthz does not touch the database; /readyz does).
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "/app/healthcheck.py"]

# The service handles SIGTERM itself: closes sockets with 1012, drains for
# OPSPUSH_DRAIN_SECONDS, exits 0. Exec form so it receives the signal directly.
STOPSIGNAL SIGTERM
ENTRYPOINT ["opspush"]
CMD ["serve"]
