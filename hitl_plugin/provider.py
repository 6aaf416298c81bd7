"""Provider metadata for Airflow (entry point ``apache_airflow_provider``)."""

from __future__ import annotations

from hitl_plugin import package_version

#: The ``label_studio`` connection's extras, as form fields (read by
#: :mod:`hitl_plugin.hooks.label_studio`).
CONN_FIELDS = {
    "token_type": {
        "label": "Token type",
        "description": "personal: a personal access token (exchanged for short-lived access "
                       "tokens); legacy: a legacy API token; auto: told apart by its form.",
        "schema": {"type": ["string", "null"], "enum": ["auto", "personal", "legacy", None],
                   "default": "auto"},
    },
    "ca_bundle": {
        "label": "CA bundle",
        "description": "Path of the CA file that signed the server's TLS certificate "
                       "(default: the system's CAs).",
        "schema": {"type": ["string", "null"]},
    },
    "image_url_prefix": {
        "label": "Image URL prefix",
        "description": "For a Label Studio that cannot read the storage root: the URL a task's "
                       "image file name is appended to (e.g. https://files.example.com/"
                       "hitl/images/). Empty: local-files serving of the storage root.",
        "schema": {"type": ["string", "null"]},
    },
}


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
                    "relabeling": {"host": "Label Studio URL",
                                   "password": "API token (personal access or legacy)"},
                    "placeholders": {"host": "http://127.0.0.1:8080",
                                     "extra": '{"token_type": "auto", '
                                              '"ca_bundle": "/etc/ssl/my-ca.pem"}'},
                },
                "conn-fields": CONN_FIELDS,
            }
        ],
    }
