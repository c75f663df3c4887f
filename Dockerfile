# The pipeline's image: workers (`dramatiq actors --queues <stage>`), `pipeline scheduler`,
# `pipeline exporter`. Used by compose/docker-compose.yml and the KEDA manifests.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY actors ./actors
# Debian's Chromium for the render stage (Playwright drives it; its own browser download is not used).
RUN apt-get update && apt-get install -y --no-install-recommends chromium && rm -rf /var/lib/apt/lists/*
RUN pip install . && useradd --create-home --uid 10001 pipeline && install -d -o pipeline /data
USER pipeline
# The working directory holds .pipeline/ (state a process may keep, e.g. a generated secret): writable.
WORKDIR /data

# Workers take the stage as an argument: dramatiq actors --queues fetch
CMD ["pipeline", "--help"]
