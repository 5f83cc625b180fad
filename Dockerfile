# syntax=docker/dockerfile:1
# The platform server image: the IDE's front end built by Node, the Python application, run as
# an unprivileged user with a read-only root filesystem. Build from the repository root:
#   docker build --build-arg VERSION="$(cat kernel_image/VERSION)" \
#     -t "code-execution-platform/platform:$(cat kernel_image/VERSION)" .

# 1. The IDE: TypeScript bundled by esbuild into platform_server/static/.
FROM node:20-bookworm-slim AS frontend
WORKDIR /src/frontend
COPY frontend/package.json frontend/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY frontend/ ./
RUN npm run build

# 2. The application and its dependencies in a venv (no compilers or caches carried over).
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY setup.cfg pyproject.toml README.md constraints.txt ./
COPY platform_server/ platform_server/
COPY extensions/ extensions/
COPY kernel_image/ kernel_image/
COPY --from=frontend /src/platform_server/static/ platform_server/static/
# Editable, so the package finds its static files and migrations where they are.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --constraint constraints.txt --editable . \
    && /opt/venv/bin/python -m compileall -q /app

# 3. The runtime.
FROM python:3.11-slim-bookworm
# The project's version (kernel_image/VERSION), as the image's label.
ARG VERSION
LABEL org.opencontainers.image.title="code-execution-platform" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="BSD-3-Clause"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    HOME=/var/lib/platform-server
RUN groupadd --gid 10001 platform \
    && useradd --uid 10001 --gid 10001 --home-dir /var/lib/platform-server --no-create-home \
        --shell /usr/sbin/nologin platform \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/platform-server
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
WORKDIR /app
USER 10001:10001
EXPOSE 8888

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8888/api/health', timeout=4)"]

# SIGTERM stops the server gracefully (jupyter_server handles it); sandboxes keep running.
ENTRYPOINT ["platform-server"]
CMD ["--ip=0.0.0.0", "--port=8888"]
