# oxyd in a container: non-root, state on the /data volume, health from /healthz.
#
#   docker build -t oxyd .
#   docker run -d --name oxyd -v oxyd-data:/data -p 127.0.0.1:8780:8780 --stop-timeout 60 oxyd
#
# Inside the container oxyd listens on 0.0.0.0 (set below) so the port mapping can reach it;
# publish it on 127.0.0.1 of the host as above, or behind a TLS proxy. Every route except
# /healthz and /readyz needs the admin token: `docker exec oxyd cat /data/admin.token`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml changes.
COPY pyproject.toml ./
RUN mkdir oxyd && touch oxyd/__init__.py README.md \
    && pip install . \
    && pip uninstall -y oxyd \
    && rm -rf oxyd README.md build *.egg-info

COPY README.md ./
COPY oxyd ./oxyd
RUN pip install --no-deps . && rm -rf build *.egg-info

# A fixed uid/gid, so volume ownership survives image rebuilds.
RUN groupadd --system --gid 10001 oxyd \
    && useradd --system --uid 10001 --gid oxyd --home-dir /data --shell /usr/sbin/nologin oxyd \
    && mkdir -p /data && chown oxyd:oxyd /data && chmod 0700 /data

ENV OXYD_DATA_DIR=/data \
    OXYD_HTTP_HOST=0.0.0.0 \
    OXYD_HTTP_PORT=8780

USER 10001:10001
VOLUME /data
EXPOSE 8780

HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-m", "oxyd.healthcheck"]

# oxyd drains its queues on SIGTERM; give it more than supervisor.stop_grace_s (10 s) with
# `docker stop -t 60` / `stop_grace_period: 60s` (Docker's default is 10 s).
STOPSIGNAL SIGTERM
CMD ["oxyd", "run"]
