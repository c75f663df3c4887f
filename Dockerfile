# The pipeline's image: workers (`dramatiq actors --queues <stage>`), `pipeline scheduler`,
# `pipeline exporter`. Used by compose/docker-compose.yml and the KEDA manifests.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY actors ./actors
RUN pip install . && useradd --create-home --uid 10001 pipeline
USER pipeline

# Workers take the stage as an argument: dramatiq actors --queues fetch
CMD ["pipeline", "--help"]
