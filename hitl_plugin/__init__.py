"""airflow-hitl: human-in-the-loop object-detection training for Apache Airflow."""
