# sales-velocity: the daily sync/metrics/notify job as a container.
#   docker build -t sales-velocity:0.1.0 .
#   docker run --rm -v "$PWD/velocity.toml:/etc/velocity/velocity.toml:ro" \
#     -v /run/secrets:/run/secrets:ro sales-velocity:0.1.0
# The mounted config's [store] url is used; VELOCITY_DATABASE_URL, when you set it, overrides it.
# Without either, the store is a SQLite file in /var/lib/velocity (mount a volume there to keep it).
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kernel ./kernel
COPY connectors ./connectors
COPY sync ./sync
COPY metrics ./metrics
COPY notify ./notify
COPY scheduler.py ./
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --prefix=/install ".[postgres,chart]"
# The bundled demo config keeps its SQLite file in the writable data folder, not next to the config.
COPY config.example.toml /etc/velocity/velocity.toml
RUN sed -i 's|^url = "sqlite:///velocity.db".*|url = "sqlite:////var/lib/velocity/velocity.db"|' \
        /etc/velocity/velocity.toml \
    && grep -q '^url = "sqlite:////var/lib/velocity/velocity.db"' /etc/velocity/velocity.toml

FROM python:3.12-slim
LABEL org.opencontainers.image.title="sales-velocity" \
      org.opencontainers.image.description="Daily sales velocity from your CRM"
# VELOCITY_DEFAULT_DATABASE_URL only fills in for a config without [store] url; it never beats the
# config. VELOCITY_DATABASE_URL is left unset here: it is the operator's override.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VELOCITY_CONFIG=/etc/velocity/velocity.toml \
    VELOCITY_DEFAULT_DATABASE_URL=sqlite:////var/lib/velocity/velocity.db \
    MPLCONFIGDIR=/tmp/matplotlib
COPY --from=build /install /usr/local
COPY --from=build /etc/velocity/velocity.toml /etc/velocity/velocity.toml
COPY connectors/demo /etc/velocity/connectors/demo
RUN useradd --system --uid 10001 --home-dir /var/lib/velocity --create-home velocity
USER 10001
WORKDIR /var/lib/velocity
# One-shot job for cron / Kubernetes CronJobs; use `velocity schedule` for a long-running service.
ENTRYPOINT ["velocity"]
CMD ["run"]
