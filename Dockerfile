# syntax=docker/dockerfile:1
# The tickbus aggregator: `docker build -t tickbus-aggregator .` (compose.yaml builds it for you).

# Build the wheel in a throwaway stage, so the runtime image carries no build tools or sources. Both
# stages install from the lock (requirements/*.txt, with hashes): the image runs what the suite tested.
FROM python:3.11-slim AS build
WORKDIR /src
# A C compiler for the compiled apply loop, exposition and counter totals (aggregator/_fastapply.pyx, _fastrender.pyx,
# _totals.pyx).
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
COPY requirements/build.txt ./requirements/
RUN pip install --no-cache-dir --disable-pip-version-check --require-hashes --no-deps -r requirements/build.txt
COPY pyproject.toml setup.py README.md LICENSE ./
COPY schemas ./schemas
COPY producers ./producers
COPY aggregator ./aggregator
COPY benchmarks ./benchmarks
RUN pip wheel --no-cache-dir --disable-pip-version-check --no-deps --no-build-isolation --wheel-dir /wheels .

FROM python:3.11-slim
# The source revision `aggregator --version` and tickbus_build_info report:
#   docker build --build-arg TICKBUS_REVISION=$(git rev-parse --short=12 HEAD) .
ARG TICKBUS_REVISION=unknown
ENV PYTHONDONTWRITEBYTECODE=1 \
    TICKBUS_REVISION=${TICKBUS_REVISION} \
    PYTHONUNBUFFERED=1 \
    TICKBUS_HTTP_HOST=0.0.0.0 \
    TICKBUS_HTTP_PORT=10464 \
    TICKBUS_STATE_DIR=/var/lib/tickbus
RUN groupadd --system --gid 10001 tickbus \
 && useradd --system --uid 10001 --gid tickbus --home-dir /var/lib/tickbus --no-create-home \
      --shell /usr/sbin/nologin tickbus \
 && mkdir -p /var/lib/tickbus /etc/tickbus \
 && chown tickbus:tickbus /var/lib/tickbus
COPY requirements/runtime.txt /tmp/requirements.txt
RUN pip install --no-cache-dir --disable-pip-version-check --require-hashes --no-deps -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-cache-dir --disable-pip-version-check --no-deps /tmp/wheels/*.whl && rm -rf /tmp/wheels \
 && python -c "import aggregator._fastapply, aggregator._fastrender, aggregator._totals"  # the compiled modules
# Checkpoints of the series state: keep this on a volume so that restarts lose nothing.
VOLUME ["/var/lib/tickbus"]
USER 10001:10001
EXPOSE 10464
# Liveness (the process serves): an orchestrator that replaces unhealthy containers must not kill an
# aggregator that waits for its broker. compose.yaml checks readiness (/readyz) instead, to gate traffic.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('TICKBUS_HTTP_PORT', '10464') + '/healthz', timeout=3)"]
# Settings come from TICKBUS_* variables (TICKBUS_AMQP_URL, TICKBUS_CONFIG, ...) or flags after `run`.
ENTRYPOINT ["aggregator"]
CMD ["run"]
