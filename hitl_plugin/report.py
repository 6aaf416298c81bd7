"""The round report: one summary people read, one plot they look at.

``rounds/<dag_id>/<run_id>/report.json`` and ``report.png`` (mAP50-95 per round of the
pipeline, and the histogram of the model's confidences on the held-out set before and
after the round's corrections).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from hitl_plugin.config import PipelineConfig
from hitl_plugin.paths import Layout, safe_component
from hitl_plugin.schemas import write_json_atomic

log = logging.getLogger(__name__)


def val_confidences(checkpoint: str | Path, layout: Layout, dataset: str, *, imgsz: int,
                    conf: float = 0.05) -> list[float]:
    """Confidences of every box the model predicts on the held-out set (streamed)."""
    from hitl_plugin.model.offline import import_ultralytics

    ultralytics = import_ultralytics()
    val = json.loads(layout.val_file(dataset).read_text())
    list_file = layout.root / "tmp" / f"val-{safe_component(dataset)}.txt"
    list_file.parent.mkdir(parents=True, exist_ok=True)
    list_file.write_text("\n".join(str(layout.image_path(i["file_name"])) for i in val["images"]))
    model = ultralytics.YOLO(str(checkpoint))
    scores: list[float] = []
    for result in model.predict(str(list_file), imgsz=imgsz, conf=conf, stream=True,
                                verbose=False, device="cpu"):
        scores.extend(float(c) for c in result.boxes.conf.tolist())
    return scores


def _history(layout: Layout, dag_id: str, run_id: str) -> list[dict]:
    folder = layout.root / "rounds" / safe_component(dag_id)
    rows = []
    for path in folder.glob("*/report.json"):
        if path.parent.name == safe_component(run_id):
            continue
        try:
            rows.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(rows, key=lambda r: r.get("finished", ""))


def plot_round(path: Path, rounds: list[dict], before: list[float], after: list[float] | None):
    """Draw mAP50-95 per round and the confidence histogram before/after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    xs = list(range(1, len(rounds) + 1))
    ax1.plot(xs, [r.get("map50_95_before") for r in rounds], "o-", label="trained this round")
    if any(r.get("map50_95_after") is not None for r in rounds):
        ax1.plot(xs, [r.get("map50_95_after") for r in rounds], "s--",
                 label="retrained on the corrections")
    ax1.set_xlabel("round")
    ax1.set_ylabel("mAP50-95 (held-out set)")
    ax1.set_xticks(xs)
    ax1.set_title("mAP per round")
    ax1.legend()
    bins = [i / 20 for i in range(21)]
    ax2.hist(before, bins=bins, alpha=0.6, label=f"before ({len(before)} boxes)")
    if after is not None:
        ax2.hist(after, bins=bins, alpha=0.6, label=f"after ({len(after)} boxes)")
    ax2.set_xlabel("confidence")
    ax2.set_ylabel("predicted boxes on the held-out set")
    ax2.set_title("Model confidence")
    ax2.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary_text(rep: dict) -> str:
    sel, cor, fixed = rep["selection"], rep["corrections"], rep["fixed"]
    lines = [
        f"Round {rep['run_id']} of {rep['dag_id']} on dataset {rep['dataset']} "
        f"{rep['base_version']}",
        f"  selected {rep['selected']} images: "
        + ", ".join(f"{n} {k}" for k, n in sorted(sel["by_reason"].items())),
        "    suspected label errors among them: "
        + (", ".join(f"{n} {k}" for k, n in sorted(sel["by_suspicion"].items())) or "none"),
        f"  corrections received: {cor['labeled']} labeled, {cor['skipped']} skipped, "
        f"{cor['rejected']} rejected",
        "  label errors fixed by kind (changes people made to labeled images): "
        + (", ".join(f"{n} {k}" for k, n in sorted(fixed.items())) or "none"),
        f"  new images labeled from the pool: {rep['pool_labeled']} "
        f"({rep['pool_boxes_labeled']} boxes)",
        f"  mAP50-95 before: {_fmt(rep['map50_95_before'])}   after: "
        f"{_fmt(rep['map50_95_after'])}",
        f"  new dataset version: {rep['new_version']} (parent {rep['base_version']})",
        f"  plot: {rep['plot']}",
    ]
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a (no retrain this round)" if value is None else f"{value:.4f}"


def write_round_report(
    layout: Layout, config: PipelineConfig, *, dag_id: str, run_id: str, results: dict
) -> dict:
    """Gather the round's results into ``report.json`` and ``report.png``.

    :param results: XCom results: ``version``, ``train``, ``gate``, ``selection``,
        ``corrections``, ``merge`` (and ``retrain`` when the round retrained).
    """
    from hitl_plugin.schemas import Corrections, SelectionManifest

    round_dir = layout.round_dir(dag_id, run_id)
    selection = SelectionManifest.model_validate_json(
        Path(results["selection"]["selection"]).read_text())
    corrections = Corrections.model_validate_json(
        Path(results["corrections"]["corrections"]).read_text())
    merge = results["merge"]
    merge_report = json.loads(Path(merge["report"]).read_text())
    by_suspicion = Counter(s.kind for item in selection.items for s in item.suspicions)
    retrain = results.get("retrain")
    rep = {
        "dag_id": dag_id,
        "run_id": run_id,
        "dataset": config.dataset.name,
        "base_version": results["version"],
        "new_version": merge["version"],
        "selected": len(selection.items),
        "selection": {
            "by_reason": dict(Counter(item.reason for item in selection.items)),
            "by_suspicion": dict(by_suspicion),
        },
        "corrections": {
            "labeled": sum(1 for c in corrections.items if c.status == "labeled"),
            "skipped": sum(1 for c in corrections.items if c.status == "skipped"),
            "rejected": len(corrections.rejected),
        },
        "fixed": merge_report.get("fixed_by_kind", {}),
        "pool_labeled": merge_report["counts"]["pool_labeled"],
        "pool_boxes_labeled": merge_report["counts"]["pool_boxes_labeled"],
        "map50_95_before": results["train"]["metrics"]["map50_95"],
        "map50_95_after": retrain["metrics"]["map50_95"] if retrain else None,
        "promoted": results["gate"].get("promoted"),
        "plot": str(round_dir / "report.png"),
        "report": str(round_dir / "report.json"),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    imgsz = config.training.imgsz
    before = val_confidences(results["train"]["checkpoint"], layout, config.dataset.name,
                             imgsz=imgsz)
    after = (val_confidences(retrain["checkpoint"], layout, config.dataset.name, imgsz=imgsz)
             if retrain else None)
    plot_round(Path(rep["plot"]), _history(layout, dag_id, run_id) + [rep], before, after)
    rep["text"] = summary_text(rep)
    write_json_atomic(round_dir / "report.json", rep)
    log.info("round report written to %s", rep["report"])
    return rep
