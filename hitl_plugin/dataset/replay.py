"""Replay a dataset's rounds without some answers: one annotator's, or one whole round's.

A careless or malicious annotator, found out after their answers were merged, is taken back
without losing the other people's work since: starting from the version before the first
affected round, every later round is merged again from its recorded corrections
(``rounds/<dag_id>/<run_id>/corrections.json``, checked against the sha256 its merge
recorded), leaving out the unwanted answers. Nothing is deleted: each replayed round is a
new version, and the last one's manifest says what was left out and why.
"""

from __future__ import annotations

import hashlib
import logging

from hitl_plugin.dataset.merge import merge_corrections
from hitl_plugin.dataset.store import DatasetStore, version_number
from hitl_plugin.exceptions import DatasetError
from hitl_plugin.schemas import Corrections

log = logging.getLogger(__name__)


def replay_without(store: DatasetStore, *, start: str, reason: str,
                   annotator: str | None = None, round_key: str | None = None) -> str:
    """Publish the rounds merged after ``start`` again, without ``annotator``'s answers or
    without the round ``round_key``; return the new LATEST.

    :param start: the version to replay from (the one before the first affected round).
    :raises DatasetError: no reason or no filter, a later version that is not a merged
        round, or a round whose corrections are missing or not the ones merged.
    """
    if not reason or not reason.strip():
        raise DatasetError("a replay needs a reason (it is kept in the manifest)")
    if (annotator is None) == (round_key is None):
        raise DatasetError("give exactly one of annotator or round_key")
    store.verify(start)
    later = [v for v in store.versions() if version_number(v) > version_number(start)]
    if not later:
        raise DatasetError(f"dataset {store.name!r}: nothing was merged after {start}")
    rounds = []
    for version in later:
        manifest = store.manifest(version)
        key, merged = manifest.get("round_key"), manifest.get("merge_input") or {}
        if not key or "|" not in key or "corrections_sha256" not in merged:
            raise DatasetError(f"dataset {store.name!r}: {version} is not a merged round "
                               f"(a revert or an import); replay from after it")
        dag_id, run_id = key.split("|", 1)
        path = store.layout.round(dag_id, run_id).corrections
        try:
            corrections = Corrections.model_validate_json(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{path}: the corrections of {version} cannot be read "
                               f"({exc})") from None
        digest = hashlib.sha256(corrections.model_dump_json().encode("utf-8")).hexdigest()
        if digest != merged["corrections_sha256"]:
            raise DatasetError(f"{path}: not the corrections {version} was merged from "
                               "(its sha256 differs)")
        rounds.append((version, key, corrections, merged))
    if round_key is not None and round_key not in {k for _, k, _, _ in rounds}:
        raise DatasetError(f"round {round_key!r} was not merged after {start}")

    plan, left_out = [], []
    for version, key, corrections, merged in rounds:
        items = corrections.items
        if key == round_key:
            left_out.append({"version": version, "round": key, "answers": len(items)})
            continue
        if annotator is not None:
            kept = [c for c in items if c.annotator != annotator]
            if len(kept) != len(items):
                left_out.append({"version": version, "round": key,
                                 "annotator": annotator, "answers": len(items) - len(kept)})
            items = kept
        plan.append((version, key, corrections.model_copy(update={"items": items}), merged))

    latest = store.revert(start, reason=f"replay: {reason}",
                          extra={"replay": {"left_out": left_out,
                                            "rounds": [k for _, k, _, _ in plan]}})
    store_round = store.layout.round
    for version, key, corrections, merged in plan:
        dag_id, run_id = key.split("|", 1)
        latest = merge_corrections(
            store, base_version=latest,
            corrections=corrections.model_copy(update={"version": latest}),
            round_key=f"{key}#replay-of-{version}-onto-{latest}",
            human_weight=float(merged.get("human_weight", 3.0)),
            decay=float(merged.get("decay", 0.5)),
            report_path=store_round(dag_id, run_id).replay_report(latest))["version"]
    log.info("dataset %s: replayed %s round(s) after %s as %s, leaving out %s (%s)",
             store.name, len(rounds), start, latest, left_out, reason)
    return latest
