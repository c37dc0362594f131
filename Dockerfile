# Goci's image. One image for every role: `goci up` (the default: web and an in-process
# worker on SQLite), or, in docker-compose.yml, daphne (web) and `manage.py worker`.
#   docker build -t goci .
# Building needs the python:3.11-slim base image and PyPI (docs/deploy.md).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GOCI_DATA_DIR=/data

WORKDIR /app

# The dependencies first: this layer is rebuilt only when requirements.txt changes.
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
# Editable: the settings find templates/ and static/ beside the packages (BASE_DIR).
RUN pip install --no-deps --editable .

# Not root. uid 1000 owns the data directory here, and must own the workspace
# directory on the host when the worker mounts it (docs/deploy.md).
RUN useradd --uid 1000 --create-home goci && mkdir /data && chown goci:goci /data
USER goci

EXPOSE 8000
CMD ["goci", "up", "--host", "0.0.0.0", "--port", "8000"]
