# One image for every service of docker-compose.yml: api, migrate, worker and
# worker-gpu differ only by their command and environment.
#   docker build -t backprop-service .
#   docker build --build-arg WITH_GPU=true -t backprop-service:gpu .   (CuPy + CUDA 12 runtime from PyPI)
FROM python:3.11-slim

ARG WITH_GPU=false

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app \
    DATA_DIR=/var/lib/backprop \
    PORT=8000

WORKDIR /app

# Dependencies first, from pyproject.toml alone, so that a code change does not
# reinstall them. The code itself is run from /app (PYTHONPATH), where
# migrations/ sits beside service/ as in the repository.
COPY pyproject.toml README.md ./
RUN mkdir -p backprop service workers \
 && touch backprop/__init__.py service/__init__.py workers/__init__.py \
 && pip install . \
 && if [ "$WITH_GPU" = "true" ]; then pip install ".[gpu]" "cupy-cuda12x[ctk]"; fi \
 && pip uninstall -y backprop-service \
 && rm -rf backprop service workers

COPY backprop ./backprop
COPY service ./service
COPY workers ./workers
COPY migrations ./migrations
COPY alembic.ini ./
RUN useradd --create-home --uid 10001 backprop \
 && mkdir -p "$DATA_DIR" \
 && chown backprop "$DATA_DIR"

USER backprop
EXPOSE 8000
# The API; docker-compose.yml gives migrate and the workers their own command.
CMD ["sh", "-c", "exec gunicorn --bind 0.0.0.0:${PORT} --workers ${WEB_CONCURRENCY:-4} 'service:create_app()'"]
