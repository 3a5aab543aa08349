# sales-velocity: the daily sync/metrics/notify job as a container.
#   docker build -t sales-velocity .
#   docker run --rm -e VELOCITY_DATABASE_URL=postgresql+psycopg://... \
#     -e HUBSPOT_TOKEN=... -v "$PWD/velocity.toml:/etc/velocity/velocity.toml:ro" sales-velocity
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
RUN pip install --no-cache-dir --prefix=/install ".[postgres]"

FROM python:3.12-slim
LABEL org.opencontainers.image.title="sales-velocity" \
      org.opencontainers.image.description="Daily sales velocity from your CRM"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VELOCITY_CONFIG=/etc/velocity/velocity.toml \
    VELOCITY_DATABASE_URL=sqlite:////var/lib/velocity/velocity.db \
    MPLCONFIGDIR=/tmp/matplotlib
COPY --from=build /install /usr/local
COPY config.example.toml /etc/velocity/velocity.toml
COPY connectors/demo /etc/velocity/connectors/demo
RUN useradd --system --uid 10001 --home-dir /var/lib/velocity --create-home velocity
USER 10001
WORKDIR /var/lib/velocity
# One-shot job for cron / Kubernetes CronJobs; use `velocity schedule` for a long-running service.
ENTRYPOINT ["velocity"]
CMD ["run"]
