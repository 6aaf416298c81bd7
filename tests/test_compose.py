"""The distributed mode's compose file stays consistent with the embedded settings.

No Docker engine runs on the development machines, so this checks the file, not a stack.
"""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_compose_shares_one_storage_root_and_binds_ports_to_loopback():
    compose = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
    services = compose["services"]
    airflow = [n for n, s in services.items() if s.get("image") == "airflow-hitl:0.1.0"]
    assert {"scheduler", "dag-processor", "triggerer", "api-server", "worker-cpu",
            "worker-gpu"} <= set(airflow)
    root = services["scheduler"]["environment"]["HITL_HOME"]
    for name in airflow + ["labelstudio"]:
        assert f"hitl-data:{root}" in services[name]["volumes"], name
    assert services["labelstudio"]["environment"]["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] == root
    assert "--queues" in services["worker-gpu"]["command"]
    assert services["worker-gpu"]["command"][-3] == "gpu"
    for name, svc in services.items():
        assert all(str(p).startswith("127.0.0.1:") for p in svc.get("ports", [])), name
