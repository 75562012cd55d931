# opamp-operator image: `docker build -t opamp-operator:0.1.0 .`
# Stage 1 installs the package and its dependencies into a virtualenv; stage 2 copies only
# that virtualenv, so pip's build machinery (setuptools, build caches) stays behind. Works
# with BuildKit and with the legacy builder alike (no RUN --mount).

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Every dependency ships manylinux wheels for CPython 3.11 (asyncpg, protobuf, aiohttp and
# its helpers included), so no compiler is needed here either.
COPY pyproject.toml README.md ./
COPY operator/ operator/
# The virtualenv gets no pip or setuptools of its own: the base image's pip installs into it.
RUN python -m venv --without-pip /opt/opamp-operator/venv \
 && pip --python /opt/opamp-operator/venv/bin/python install .

# Same base as the build stage, so the virtualenv's interpreter link resolves.
FROM ${PYTHON_IMAGE}
# PYTHONDONTWRITEBYTECODE: the root filesystem is read-only in the pod; pip already compiled
# the .pyc files at install time, Python only reads them.
# OPAMP_OPERATOR_MIGRATIONS: where `migrate` and --migrate-on-start find the SQL files
# (an installed package cannot find the repository's migrations/ by itself).
ENV PATH=/opt/opamp-operator/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OPAMP_OPERATOR_MIGRATIONS=/opt/opamp-operator/migrations
# The base image's own pip/setuptools/wheel are build tools the operator never uses.
RUN python -m pip uninstall --yes pip setuptools wheel \
 && groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin nonroot
COPY --from=build /opt/opamp-operator/venv /opt/opamp-operator/venv
COPY migrations/ /opt/opamp-operator/migrations/
# Numeric, so Kubernetes can check runAsNonRoot without reading /etc/passwd.
USER 65532:65532
WORKDIR /tmp
EXPOSE 4320 8080
ENTRYPOINT ["opamp-operator", "run"]
