# Image for the distributed mode (docker-compose.yaml): Airflow 3.3.2 with airflow-hitl.
# Not built on the development machines (they run no Docker engine); see README.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/airflow-hitl
COPY pyproject.toml README.md ./
COPY hitl_plugin hitl_plugin
COPY operators operators
COPY sensors sensors
# celery 5.7 breaks apache-airflow-providers-celery 3.26 ("cannot import name 'retry'").
RUN pip install --no-cache-dir . "apache-airflow-providers-celery==3.26.0" "celery==5.6.3" \
    "psycopg2-binary==2.9.13" "redis==8.1.0"
COPY dags /opt/airflow/dags
ENV AIRFLOW_HOME=/opt/airflow HITL_HOME=/opt/hitl
