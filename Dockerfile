# The purchase-segments image: `segments worker` by default, any `segments ...` command
# otherwise (docker-compose.yml runs the worker and the generator from it).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_NO_CACHE=1

RUN pip install "uv==0.13.9" \
    && useradd --system --uid 10001 --create-home --home-dir /var/lib/segments segments

WORKDIR /app

# Runtime dependencies first, pinned by the lock file, so that a code change does not
# reinstall them. (-r pyproject.toml: the project's own dependency list, no dev tools.)
COPY pyproject.toml requirements.lock README.md ./
RUN uv pip install --system -c requirements.lock -r pyproject.toml

COPY segments ./segments
COPY streams ./streams
RUN uv pip install --system --no-deps . && segments --version

USER segments
# RocksDB tables live in /var/lib/segments (a volume in docker-compose.yml). Inside a
# container the HTTP server must listen beyond loopback; publish it on 127.0.0.1.
# Logs: one JSON object per line, for a log collector (docs/operations.md "Logs").
ENV SEGMENTS_DATA_DIR=/var/lib/segments \
    SEGMENTS_WEB_HOST=0.0.0.0 \
    SEGMENTS_WEB_PORT=6066 \
    SEGMENTS_LOG_FORMAT=json
VOLUME ["/var/lib/segments"]
EXPOSE 6066

HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:${SEGMENTS_WEB_PORT}/healthz', timeout=2)"

ENTRYPOINT ["segments"]
CMD ["worker"]
