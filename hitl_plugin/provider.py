"""Provider metadata for Airflow (entry point ``apache_airflow_provider``)."""

from __future__ import annotations

from hitl_plugin import package_version


def get_provider_info() -> dict:
    """Describe the package and the ``label_studio`` connection type to Airflow."""
    return {
        "package-name": "airflow-hitl",
        "name": "Human-in-the-loop training (airflow-hitl)",
        "description": "Human-in-the-loop object-detection training with Label Studio.",
        "versions": [package_version()],
        "connection-types": [
            {
                "connection-type": "label_studio",
                "hook-class-name": "hitl_plugin.hooks.label_studio.LabelStudioHook",
                "hook-name": "Label Studio",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "login"],
                    "relabeling": {"host": "Label Studio URL", "password": "API token"},
                    "placeholders": {"host": "http://127.0.0.1:8080",
                                     "extra": '{"ca_bundle": "/etc/ssl/my-ca.pem"}'},
                },
                "conn-fields": {},
            }
        ],
    }
