# syntax=docker/dockerfile:1
#
# One image for the API (`python -m service`, the default command: one uvicorn process per
# container, scale with more containers) and for the Replicate simulator
# (`python -m service.simulator ...`, used by docker-compose.yml's `demo` profile).
#
# The package is NOT pip-installed: the source tree is copied to /app and run from there
# (PYTHONPATH=/app), so /app/redis_scripts stays next to /app/service, where
# service/coordination/scripts.py looks for it (SCRIPTS_DIR = parents[2] / "redis_scripts").
# Only the dependencies listed in pyproject.toml are installed, in their own cached layer.

FROM python:3.12-slim

LABEL org.opencontainers.image.title="replicate-concurrent-generation" \
      org.opencontainers.image.description="Concurrent image generation with Replicate models; limits shared across replicas through Redis"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /app

# Dependencies first: this layer is rebuilt only when pyproject.toml changes, not on every
# source edit. [project].dependencies is read with tomllib (stdlib) into a requirements file;
# every dependency ships manylinux wheels, so no compiler is needed.
COPY pyproject.toml ./
RUN python -c "import pathlib, tomllib; p = pathlib.Path; deps = tomllib.loads(p('pyproject.toml').read_text())['project']['dependencies']; p('/tmp/requirements.txt').write_text('\n'.join(deps) + '\n')" \
 && pip install --no-cache-dir -r /tmp/requirements.txt \
 && rm -f /tmp/requirements.txt

# An unprivileged user with a fixed numeric id (so `runAsNonRoot`-style checks can verify it).
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin app

# The application: the package and the Lua scripts it loads from ../redis_scripts. Owned by
# root and read-only for the app user. Byte-code is compiled here, once, because the running
# container writes none (PYTHONDONTWRITEBYTECODE; the compose file also mounts / read-only).
COPY service/ /app/service/
COPY redis_scripts/ /app/redis_scripts/
RUN python -m compileall -q /app/service

USER 10001:10001

EXPOSE 5003

# slim has no curl: urllib it is. Non-2xx and connection errors raise, so the exit code is 1.
# FLASK_PORT is read at check time so `docker run -e FLASK_PORT=...` keeps the check right.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('FLASK_PORT', '5003'), timeout=4).close()"]

# Exec form, so SIGTERM reaches Python (uvicorn) directly and the service drains
# (DRAIN_SECONDS, default 25) before it exits; give `docker stop -t` / compose
# stop_grace_period more than that.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "service"]
