# syntax=docker/dockerfile:1
# shardwise in a container: `docker build -t shardwise .`
#
# The image holds shardwise and its dependencies (not the `demo` extra: no moto). Your
# handler goes in an image of your own built FROM this one, e.g.
#
#   FROM shardwise:0.1.0
#   USER root
#   COPY requirements.txt /tmp/
#   RUN pip install -r /tmp/requirements.txt    # into shardwise's virtualenv
#   COPY orders_view.py /app/
#   USER 10001:10001
#
# /app is the working directory, which is on the handler search path; the config is read
# from /etc/shardwise/shardwise.yaml (a ConfigMap or a COPY), whose directory is searched
# first. Metrics and probes: http.bind must be 0.0.0.0:9400 inside a container.

# --- builder: the wheel, and a virtualenv with it installed ---------------------------------
# Dependencies are installed at the versions pinned in requirements/constraints.txt (make lock),
# so the same commit always builds the same image.
FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /build
COPY pyproject.toml README.md ./
COPY requirements/constraints.txt ./requirements/
COPY src ./src
RUN pip wheel --no-deps --wheel-dir /build/dist . \
    && python -m venv /opt/shardwise \
    && /opt/shardwise/bin/pip install --constraint requirements/constraints.txt \
        /build/dist/shardwise-*.whl \
    && /opt/shardwise/bin/pip uninstall --yes setuptools \
    && find /opt/shardwise -name '__pycache__' -type d -prune -exec rm -rf {} +

# --- runtime ---------------------------------------------------------------------------------
FROM python:3.11-slim

ENV PATH=/opt/shardwise/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 shardwise \
    && useradd --system --uid 10001 --gid shardwise --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin shardwise \
    && mkdir -p /app /etc/shardwise \
    && chown shardwise:shardwise /app

COPY --from=builder /opt/shardwise /opt/shardwise

WORKDIR /app
USER 10001:10001
EXPOSE 9400
STOPSIGNAL SIGTERM

# Alive means making progress (see shardwise.observe.health); 503 makes urlopen raise.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9400/healthz', timeout=4)"]

ENTRYPOINT ["shardwise"]
CMD ["run", "-c", "/etc/shardwise/shardwise.yaml"]
