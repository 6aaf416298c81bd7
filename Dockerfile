# Image for the distributed mode (docker-compose.yaml): Airflow 3.3.2 with airflow-hitl.
# Not built on the development machines (they run no Docker engine); see README.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/airflow-hitl
COPY pyproject.toml README.md constraints.txt ./
COPY hitl_plugin hitl_plugin
COPY operators operators
COPY sensors sensors
# the `hitl` command (its init service seeds the example data with `hitl synth`)
COPY hitl_dev hitl_dev
# The distributed extra: the Celery provider (celery 5.6, as 5.7 breaks it), psycopg2,
# asyncpg and redis; the native distributed test installs the same, from the same lock file.
RUN pip install --no-cache-dir -c constraints.txt ".[distributed]"
# DAG files and their configs are mounted by docker-compose.yaml (./dags), not baked in.
ENV AIRFLOW_HOME=/opt/airflow HITL_HOME=/opt/hitl
