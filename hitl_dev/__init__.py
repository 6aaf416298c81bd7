"""Development tooling of airflow-hitl: never imported by the runtime package.

What lives here serves the demo, the tests and the benchmarks, not a pipeline in production:

- :mod:`hitl_dev.synth`: synthetic shapes datasets whose truth is known;
- :mod:`hitl_dev.simulator`: SIMULATED annotators that label through Label Studio;
- :mod:`hitl_dev.labelstudio`: starts and stops a local Label Studio process;
- :mod:`hitl_dev.stack`: the embedded Airflow + Label Studio stack of ``make demo``;
- :mod:`hitl_dev.base_checkpoint`: the recipe of the base checkpoint shipped in the package;
- :mod:`hitl_dev.bench`: the ``hitl bench`` benchmarks.

It runs from a checkout of the project (an editable install): :data:`PROJECT_DIR` is the
folder that holds ``dags/`` and the Label Studio virtual environment.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The project checkout: ``HITL_PROJECT_DIR``, else the folder above this package.
PROJECT_DIR = Path(os.environ.get("HITL_PROJECT_DIR") or Path(__file__).resolve().parent.parent)
