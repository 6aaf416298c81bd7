"""``hitl bench drift``: does the drift step notice a changed world, and does acting on it pay?

Two parts, per seed (``--seeds K`` from ``--seed S``), on synthetic shapes (``hitl synth``
with its ``drift`` option, the truth known):

**Detection.** A model trained on the original look (300 train images, 96 px, 40 epochs
from the shipped base checkpoint) is the pre-drift model; its held-out set (200 images of
the original look) is the drift step's reference. Pools of 500 images, each generated
afresh with its own seed, go through the product's own code: the score pass with the drift
inputs (:func:`hitl_plugin.model.score.score_images` with ``drift_out``) and the drift
test (:func:`hitl_plugin.model.drift.detect`, the defaults of the ``drift`` config):

- ``ceil(102 / K)`` pools per seed without drift (at least 100 in all) give the false-alarm
  rate, against the seed's held-out set (what a pipeline sees: one reference for every
  pool) and, apart, each against a fresh held-out set of its own (what the test's level
  promises, on average over held-out sets);
- ``--power-pools`` pools per kind of drift and seed (background, colour, scale,
  class_mix) at the stated strength (``--share``: the share of a pool's images in the new
  look; every other image is of the original look) give the power per kind.

The held-out set is predicted once per seed and reused with every pool.

**Recovery.** The world changes: the pool (500 images) comes from a drifted world (60 % of
its images with new backgrounds and new colours) and the model meets it. Then R rounds
(``--rounds``, default 2) of the product's loop (:func:`hitl_dev.bench.rounds.run_arm`:
score -> [drift] -> select -> SIMULATED reviewers -> merge -> train, each round warm-started
from the last one's model) at a 5 % budget (40 of the 800 train + pool images), in three
arms:

- ``drift_on``: the drift step before selection, with the ``drift`` config's defaults (on
  drift: budget x 2, capped at 25 % of the images; half of it reserved for the pool images
  farthest from the held-out set in embedding space). It tests each pool image once, so
  it acts in the first round; later rounds' pools hold only images it has tested;
- ``drift_off``: plain selection (the shipped default, hybrid);
- ``random``: the budget drawn at random.

Each model is evaluated on a drifted held-out set (200 images of the drifted world, apart
from the pool). ``recovered_fraction_after_2`` is that mAP50-95 after two rounds divided by
the pre-drift model's mAP50-95 on the original held-out set.

Trainings are cached by content hash under ``--work`` (:class:`hitl_dev.bench.rounds.Trainer`),
and each pool's test result too, so a rerun only redoes what changed. stdout carries only
the final JSON; progress goes to stderr. With ``--out``, a PNG beside it plots mAP on the
drifted held-out set per round (mean +/- std over seeds) and the power per kind.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np

from hitl_dev.bench import run_in_work
from hitl_dev.bench.rounds import DATASET, Scenario, Trainer, mean_std, run_arm

log = logging.getLogger(__name__)

#: The world the model knew, and the data of the recovery part.
BASE_SYNTH = {"train": 300, "val": 200, "pool": 500, "classes": 4, "imgsz": 96, "noise": 0.0}
#: The drifted world of the recovery part: new backgrounds and colours on 60 % of images.
WORLD = {"kinds": ["background", "colour"], "share": 0.6}
KINDS = ("background", "colour", "scale", "class_mix")
POOL_SIZE = 500
#: No-drift pools in all (over the seeds): at least 100.
NO_DRIFT_POOLS = 102
BUDGET_FRACTION = 0.05
#: Epochs of the pre-drift model (later rounds: max(10, ceil(3000 / labeled images))).
FIRST_EPOCHS = 40
ARMS = {
    "drift_on": {"drift": {"enabled": True}},
    "drift_off": {},
    "random": {"strategy": "random"},
}


def scenario(rounds: int) -> Scenario:
    n = BASE_SYNTH["train"] + BASE_SYNTH["pool"]
    return Scenario(
        name="drift", synth={**BASE_SYNTH, "drift": WORLD, "drift_val": BASE_SYNTH["val"]},
        rounds=rounds, budget=round(BUDGET_FRACTION * n), strategies=ARMS, passes=3000,
        min_epochs=10, chain=True, follow="latest",
        # the pre-drift model trained to its plateau, so that later rounds' gains are the
        # labels', not more epochs'
        extra={"start_verified": True, "first_epochs": FIRST_EPOCHS})


def wilson(k: int, n: int, z: float = 1.96) -> list[float] | None:
    """95 % Wilson interval of a rate ``k / n``."""
    if n == 0:
        return None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


# -- detection ----------------------------------------------------------------------------


def _drift_config():
    from hitl_plugin.config import DriftConfig

    return DriftConfig()


def held_out_inputs(checkpoint: str, data: Path, out: Path, *, imgsz: int, threads: int,
                    device: str):
    """The pre-drift model's drift inputs of the held-out set (one pass, reused; cached by
    the checkpoint's content)."""
    from hitl_dev.bench.rounds import file_digest
    from hitl_plugin.config import SelectionConfig
    from hitl_plugin.model.drift import DriftInputs
    from hitl_plugin.model.score import score_images

    target = out / (f"heldout-{file_digest(Path(checkpoint))}-{imgsz}"
                    f"-v{DriftInputs.VERSION}.npz")
    if not target.is_file():
        val = json.loads((data / "annotations" / "val.json").read_text())
        empty = {"images": [], "annotations": [], "categories": val["categories"]}
        score_images(checkpoint, empty, data, out / "heldout_scores.jsonl",
                     selection=SelectionConfig(), imgsz=imgsz, device=device, threads=threads,
                     drift_out=target, reference=val)
    return DriftInputs.load(target)


def synth_inputs(checkpoint: str, *, split: str, n: int, seed: int, spec: dict | None,
                 work: Path, cache: Path, imgsz: int, threads: int, device: str):
    """Generate ``n`` fresh images of one world and keep what the drift step sees of them.

    :param split: ``pool`` (scored as pool images) or ``heldout`` (predicted as the held-out
        set is, in the same pass).
    :param spec: the synth drift spec (None: the original look).
    :return: ``(DriftInputs, images in the new look)``; cached by content under ``cache``.
    """
    from hitl_dev.bench.rounds import file_digest
    from hitl_dev.synth import generate
    from hitl_plugin.config import SelectionConfig
    from hitl_plugin.model.drift import DriftInputs
    from hitl_plugin.model.score import score_images

    key = hashlib.sha256(json.dumps([file_digest(Path(checkpoint)), split, n, seed, spec,
                                     imgsz, DriftInputs.VERSION],
                                    sort_keys=True).encode()).hexdigest()[:16]
    target, meta = cache / f"{key}.npz", cache / f"{key}.json"
    cache.mkdir(parents=True, exist_ok=True)
    if target.is_file() and meta.is_file():
        return DriftInputs.load(target), json.loads(meta.read_text())["drifted"]
    folder = work / f"gen-{key}"
    shutil.rmtree(folder, ignore_errors=True)
    synth = {k: v for k, v in BASE_SYNTH.items() if k not in ("train", "val", "pool")}
    counts = {"pool": n, "val": 0} if split == "pool" else {"pool": 0, "val": n}
    summary = generate(folder, train=0, seed=seed, **counts, **synth,
                       **({"drift": spec, "drift_val": 0} if spec else {}))
    name = "pool" if split == "pool" else "val"
    coco = json.loads((folder / "annotations" / f"{name}.json").read_text())
    scratch = folder / "inputs.npz"
    if split == "pool":
        for img in coco["images"]:
            img["hitl_split"] = "pool"
        score_images(checkpoint, coco, folder, folder / "scores.jsonl",
                     selection=SelectionConfig(), imgsz=imgsz, device=device, threads=threads,
                     drift_out=scratch)
    else:
        empty = {"images": [], "annotations": [], "categories": coco["categories"]}
        score_images(checkpoint, empty, folder, folder / "scores.jsonl",
                     selection=SelectionConfig(), imgsz=imgsz, device=device, threads=threads,
                     drift_out=scratch, reference=coco)
    inputs = DriftInputs.load(scratch)
    inputs.save(target)
    drifted = (summary.get("drift") or {}).get("pool_drifted", 0) if spec else 0
    meta.write_text(json.dumps({"drifted": drifted}))
    shutil.rmtree(folder, ignore_errors=True)
    return inputs, drifted


def _test(reference, pool, seed: int) -> dict:
    from hitl_plugin.model.drift import DriftInputs, detect

    cfg = _drift_config()
    found = detect(DriftInputs.concat(reference, pool), alpha=cfg.alpha,
                   permutations=cfg.permutations, min_images=cfg.min_images,
                   neighbours=cfg.neighbours, seed=seed)
    return {"verdict": found["verdict"], "detected": found["detected"],
            "p_values": {k: v["p_value"] for k, v in found["signals"].items()},
            "statistics": {k: v["statistic"] for k, v in found["signals"].items()}}


def pool_test(checkpoint: str, held, *, spec: dict | None, pool_seed: int, work: Path,
              imgsz: int, threads: int, device: str, cache: Path,
              fresh_reference_seed: int | None = None) -> dict:
    """Generate one pool, keep its drift inputs, and test it against the held-out set (the
    pipeline's reference, the same for every pool of a seed).

    :param spec: the synth drift spec (None: no drift).
    :param fresh_reference_seed: also test the pool against a fresh held-out set of the
        original look (``fresh_reference``), drawn with this seed: a test whose reference
        and pool are both new draws, what the test's level promises.
    """
    gen = {"work": work, "cache": cache, "imgsz": imgsz, "threads": threads,
           "device": device}
    pool, drifted = synth_inputs(checkpoint, split="pool", n=POOL_SIZE, seed=pool_seed,
                                 spec=spec, **gen)
    result = {"pool_seed": pool_seed, "drift": spec, "drifted_images": drifted,
              **_test(held, pool, pool_seed)}
    if fresh_reference_seed is not None:
        ref, _ = synth_inputs(checkpoint, split="heldout", n=len(held),
                              seed=fresh_reference_seed, spec=None, **gen)
        result["fresh_reference"] = {"seed": fresh_reference_seed,
                                     **_test(ref, pool, pool_seed)}
    return result


def detection(seed: int, checkpoint: str, data: Path, work: Path, *, n_no_drift: int,
              n_power: int, share: float, imgsz: int, threads: int, device: str) -> dict:
    """False alarms and power per kind for one seed's pre-drift model."""
    cache = work / "pool-tests"
    cache.mkdir(parents=True, exist_ok=True)
    scratch = work / "scratch" / f"seed{seed}"
    scratch.mkdir(parents=True, exist_ok=True)
    held = held_out_inputs(checkpoint, data, scratch, imgsz=imgsz, threads=threads,
                           device=device)
    began = time.monotonic()
    runs: list[tuple[str, dict | None, int]] = [
        ("none", None, 1_000_000 + 1000 * seed + j) for j in range(n_no_drift)]
    for k, kind in enumerate(KINDS):
        runs += [(kind, {"kinds": [kind], "share": share}, 2_000_000 + 10_000 * k
                  + 1000 * seed + j) for j in range(n_power)]
    out: dict[str, list[dict]] = {"none": [], **{k: [] for k in KINDS}}
    for n, (kind, spec, pool_seed) in enumerate(runs, start=1):
        out[kind].append(pool_test(
            checkpoint, held, spec=spec, pool_seed=pool_seed, work=scratch, imgsz=imgsz,
            threads=threads, device=device, cache=cache,
            fresh_reference_seed=pool_seed + 500_000 if spec is None else None))
        if n % 10 == 0 or n == len(runs):
            log.info("[drift seed %s] %s/%s pools tested (%.0f s)", seed, n, len(runs),
                     time.monotonic() - began)
    return out


SIGNALS = ("confidence", "box_count", "class_mix", "embedding")


def summarize_detection(tests: dict[str, list[dict]], share: float) -> dict:
    signals = SIGNALS

    def rate(rows: list[dict], signal: str | None = None) -> dict:
        if signal is None:
            k = sum(1 for r in rows if r["detected"])
        else:  # this signal alone at the verdict's level (alpha / 3)
            level = _drift_config().alpha / len(signals)
            k = sum(1 for r in rows if (r["p_values"].get(signal) or 1.0) < level)
        return {"rate": round(k / len(rows), 4) if rows else None, "detected": k,
                "pools": len(rows), "ci95": wilson(k, len(rows))}

    none = tests["none"]
    fresh = [r["fresh_reference"] for r in none if r.get("fresh_reference")]

    def median_p(rows: list[dict]) -> dict:
        return {s: round(float(np.median([r["p_values"][s] for r in rows
                                          if r["p_values"].get(s) is not None])), 4)
                for s in signals} if rows else {}
    power = {kind: {**rate(tests[kind]), "share": share,
                    "drifted_images_mean": round(float(np.mean(
                        [r["drifted_images"] for r in tests[kind]])), 1) if tests[kind] else None,
                    "by_signal": {s: rate(tests[kind], s)["rate"] for s in signals}}
             for kind in KINDS}
    return {"false_alarm": {**rate(none), "by_signal": {s: rate(none, s)["rate"]
                                                        for s in signals},
                            "median_p_value": median_p(none),
                            "reference": "the pipeline's held-out set, one per seed"},
            "false_alarm_fresh_reference": {
                **rate(fresh), "by_signal": {s: rate(fresh, s)["rate"] for s in signals},
                "median_p_value": median_p(fresh),
                "reference": "a fresh held-out set of the original look for every pool"},
            "power": power,
            "detection_power": min((p["rate"] for p in power.values() if p["rate"] is not None),
                                   default=None)}


# -- recovery -----------------------------------------------------------------------------


class DriftedEval:
    """Evaluate every round's model on the drifted held-out set too (cached per model)."""

    def __init__(self, data: Path, work: Path, trainings: Path, *, imgsz: int,
                 device: str) -> None:
        from hitl_plugin.dataset.export import export_yolo
        from hitl_plugin.dataset.store import DatasetStore
        from hitl_plugin.paths import Layout

        self.imgsz, self.device, self.trainings = imgsz, device, trainings
        root = work / "eval-drifted"
        source = work / "eval-drifted-source"
        if not (root / ".done").is_file():
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(source, ignore_errors=True)
            (source / "annotations").mkdir(parents=True)
            (source / "images").symlink_to(data / "images")
            shutil.copy(data / "annotations" / "train.json", source / "annotations")
            shutil.copy(data / "annotations" / "val_drifted.json",
                        source / "annotations" / "val.json")
            (source / "annotations" / "pool.json").write_text(json.dumps(
                {**json.loads((data / "annotations" / "val.json").read_text()),
                 "images": [], "annotations": []}))
            DatasetStore(root, DATASET).import_source(source)
            (root / ".done").write_text("{}")
        store = DatasetStore(root, DATASET)
        version = store.require_latest()
        self.val_file = Layout.at(root).val_file(DATASET)
        self.data_yaml = export_yolo(root, DATASET, version, store.load(version),
                                     json.loads(self.val_file.read_text()))

    def __call__(self, fit: dict) -> dict:
        from hitl_plugin.model.evaluate import evaluate
        from hitl_plugin.paths import ModelPaths

        folder = self.trainings / fit["key"] / "eval-drifted"
        done = folder / "bench_drifted.json"
        if not done.is_file() or json.loads(done.read_text()).get("checkpoint") != str(
                Path(fit["checkpoint"])):
            metrics = evaluate(Path(fit["checkpoint"]), self.data_yaml, self.val_file,
                               ModelPaths(folder), imgsz=self.imgsz, device=self.device)
            done.write_text(json.dumps({"checkpoint": str(Path(fit["checkpoint"])),
                                        "map50_95": metrics["map50_95"],
                                        "map50": metrics["map50"]}))
        drifted = json.loads(done.read_text())
        return {"map50_95_drifted": drifted["map50_95"], "map50_drifted": drifted["map50"]}


def drifted_picks(root: Path, rounds: int, drifted: set[int]) -> list[dict]:
    """Per round of an arm: images sent to people, and how many of them in the new look."""
    from hitl_dev.bench.rounds import DAG_ID
    from hitl_plugin.paths import Layout
    from hitl_plugin.schemas import SelectionManifest, read_model

    out = []
    for r in range(rounds):
        path = Layout.at(root).round(DAG_ID, f"round{r}").selection
        if not path.is_file():
            break
        manifest = read_model(SelectionManifest, path)
        ids = [s.image_id for s in manifest.items]
        out.append({"round": r, "sent": len(ids),
                    "new_look": sum(1 for i in ids if i in drifted),
                    "reason_drift": sum(1 for s in manifest.items if s.reason == "drift")})
    return out


def summarize_recovery(arms: list[dict], pre: dict[int, float], rounds: int) -> dict:
    at = min(2, rounds)
    per = {}
    for name in ARMS:
        rows = [a for a in arms if a["strategy"] == name]
        by_round = [[a["curve"][r]["map50_95_drifted"] for a in rows] for r in range(rounds + 1)]
        fractions = [a["curve"][at]["map50_95_drifted"] / pre[a["seed"]] for a in rows]
        labels = [a["curve"][at]["images_to_people"] for a in rows]
        mean, std = mean_std(fractions)
        per[name] = {"recovered_fraction": mean, "recovered_std": std,
                     "per_seed": [round(f, 4) for f in fractions],
                     "images_to_people_after_2": mean_std(labels)[0],
                     "map50_95_drifted_mean": [mean_std(v)[0] for v in by_round],
                     "map50_95_drifted_std": [mean_std(v)[1] for v in by_round],
                     "map50_95_original_mean": [mean_std(
                         [a["curve"][r]["map50_95"] for a in rows])[0]
                         for r in range(rounds + 1)]}
    return per


# -- the plot -----------------------------------------------------------------------------


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rec = result["recovery"]
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.3), gridspec_kw={"width_ratios": [3, 2]})
    ax = axes[0]
    pre = float(np.mean(list(result["pre_drift_map50_95"].values())))
    for name, row in rec.items():
        mean = np.array(row["map50_95_drifted_mean"], dtype=float)
        std = np.array([s or 0.0 for s in row["map50_95_drifted_std"]], dtype=float)
        x = np.arange(len(mean))
        ax.plot(x, mean, marker="o", label=f"{name} ({row['images_to_people_after_2']:.0f} "
                "images to people by round 2)")
        ax.fill_between(x, mean - std, mean + std, alpha=0.18)
    ax.axhline(pre, ls="--", lw=1, color="grey")
    ax.text(0, pre, " pre-drift model on the original held-out set", va="bottom", fontsize=8,
            color="grey")
    ax.axhline(0.9 * pre, ls=":", lw=1, color="grey")
    ax.text(0, 0.9 * pre, " 90 % of it", va="bottom", fontsize=8, color="grey")
    ax.set_xlabel("round (0: the pre-drift model meets the drifted world)")
    ax.set_ylabel("mAP50-95, drifted held-out set")
    ax.set_xticks(range(len(mean)))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax = axes[1]
    det = result["summary"]["detection"]
    names = [k.replace("_", "\n") for k in det["power"]] + ["no drift", "no drift,\nfresh ref."]
    values = [det["power"][k]["rate"] for k in det["power"]] + [
        det["false_alarm"]["rate"], det["false_alarm_fresh_reference"]["rate"] or 0.0]
    colours = ["tab:blue"] * len(det["power"]) + ["tab:red", "tab:orange"]
    ax.bar(names, values, color=colours)
    for i, v in enumerate(values):
        ax.text(i, v + 0.01, f"{v:.2f}", ha="center", fontsize=8)
    ax.axhline(0.9, ls=":", lw=1, color="tab:blue")
    ax.axhline(0.05, ls=":", lw=1, color="tab:red")
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("share of pools flagged as drifted")
    ax.tick_params(axis="x", labelsize=8)
    ax.set_title(f"power per kind (share {det['power'][KINDS[0]]['share']} of a pool in the "
                 "new look)\nand false alarms (no drift)", fontsize=9)
    seeds = result["seeds"]
    fig.suptitle(f"hitl bench drift: seed{'s' if len(seeds) > 1 else ''} "
                 f"{', '.join(map(str, seeds))}, pools of {POOL_SIZE} "
                 "(SIMULATED reviewers)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the command --------------------------------------------------------------------------


def run(seeds: list[int], work: Path, *, rounds: int = 2, share: float = 0.5,
        power_pools: int = 7, threads: int = 2, device: str = "auto",
        on_progress=None) -> dict:
    from hitl_dev.bench.rounds import make_data
    from hitl_plugin.model.train import BUILTIN_BASE

    started = time.monotonic()
    sc = scenario(rounds)
    trainer = Trainer(work / "trainings", sc, weights=BUILTIN_BASE, threads=threads,
                      device=device)
    n_no_drift = math.ceil(NO_DRIFT_POOLS / len(seeds))
    result: dict = {
        "benchmark": "drift", "seeds": seeds, "simulated_people": True, "complete": False,
        "settings": {"synth": sc.synth, "pool_size": POOL_SIZE, "rounds": rounds,
                     "budget_per_round": sc.budget, "budget_fraction": BUDGET_FRACTION,
                     "imgsz": sc.imgsz, "epochs": f"{FIRST_EPOCHS} for the pre-drift model, "
                     f"then max({sc.min_epochs}, ceil({sc.passes} / labeled images)) per round",
                     "no_drift_pools_per_seed": n_no_drift,
                     "power_pools_per_kind_and_seed": power_pools, "power_share": share,
                     "drift_config": _drift_config().model_dump(), "arms": ARMS,
                     "reference": "the held-out set (original look, 200 images)",
                     "warm_start": "each round from the last round's model"},
        "pre_drift_map50_95": {}, "arms": [], "detection": {}}
    tests: dict[str, list[dict]] = {"none": [], **{k: [] for k in KINDS}}
    for seed in seeds:
        data = make_data(sc, seed, work)
        drifted = {int(k) for k in json.loads(
            (data / "drift_report.json").read_text())["images"]}
        evaluate_also = DriftedEval(data, work / f"seed{seed}-eval", work / "trainings",
                                    imgsz=sc.imgsz, device=device)
        for name in ARMS:
            arm = run_arm(sc, name, seed, data, work, trainer, threads=threads, device=device,
                          evaluate_also=evaluate_also)
            arm["picks"] = drifted_picks(work / f"seed{seed}" / name, rounds, drifted)
            result["arms"].append(arm)
            result["trainings"] = {"trained": trainer.trained, "reused": trainer.reused,
                                   "train_seconds": round(trainer.seconds, 1)}
            if on_progress:
                on_progress(result)
        pre = result["arms"][-1]["curve"][0]
        result["pre_drift_map50_95"][str(seed)] = pre["map50_95"]
        checkpoint = _checkpoint_of(work, pre["training"])
        seed_tests = detection(seed, checkpoint, data, work, n_no_drift=n_no_drift,
                               n_power=power_pools, share=share, imgsz=sc.imgsz,
                               threads=threads, device=device)
        result["detection"][str(seed)] = summarize_detection(seed_tests, share)
        for kind, rows in seed_tests.items():
            tests[kind] += rows
        if on_progress:
            on_progress(result)
    pre = {int(k): v for k, v in result["pre_drift_map50_95"].items()}
    recovery = summarize_recovery(result["arms"], pre, rounds)
    det = summarize_detection(tests, share)
    result["recovery"] = recovery
    on, off = recovery["drift_on"], recovery["drift_off"]
    std = max(off["recovered_std"] or 0.0, on["recovered_std"] or 0.0)
    paired = [round(a - b, 4) for a, b in zip(on["per_seed"], off["per_seed"])]
    result["summary"] = {
        "detection_power": det["detection_power"],
        "false_alarm_rate": det["false_alarm"]["rate"],
        "false_alarm_rate_fresh_reference": det["false_alarm_fresh_reference"]["rate"],
        "recovered_fraction_after_2": {k: v["recovered_fraction"] for k, v in recovery.items()},
        "recovered_std": {k: v["recovered_std"] for k, v in recovery.items()},
        "targets": {
            "power_at_least_0.9": det["detection_power"] is not None
            and det["detection_power"] >= 0.9,
            "false_alarms_at_most_0.05": det["false_alarm"]["rate"] is not None
            and det["false_alarm"]["rate"] <= 0.05,
            "false_alarms_fresh_reference_at_most_0.05":
                det["false_alarm_fresh_reference"]["rate"] is not None
                and det["false_alarm_fresh_reference"]["rate"] <= 0.05,
            "drift_on_recovers_0.9": (on["recovered_fraction"] or 0) >= 0.9,
            "drift_on_ahead_of_plain_by_more_than_std":
                (on["recovered_fraction"] or 0) - (off["recovered_fraction"] or 0) > std,
            "drift_on_ahead_of_plain_by_more_than_paired_std": bool(paired) and (
                mean_std(paired)[0] > (mean_std(paired)[1] or 0.0)),
        },
        "drift_on_minus_plain": round((on["recovered_fraction"] or 0)
                                      - (off["recovered_fraction"] or 0), 4),
        "std_compared": round(std, 4),
        # the same comparison per seed (both arms share the seed's data and first model)
        "drift_on_minus_plain_per_seed": paired,
        "drift_on_minus_plain_paired_std": mean_std(paired)[1],
        "detection": det,
    }
    result["complete"] = True
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def _checkpoint_of(work: Path, key: str) -> str:
    """The checkpoint of a cached training (its record, :class:`Trainer`'s)."""
    return json.loads((work / "trainings" / key / "bench_fit.json").read_text())["checkpoint"]


def main(argv: list[str], prog: str = "hitl bench drift") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--out", type=Path, default=None,
                        help="write the JSON here too, and the plot beside it (.png)")
    parser.add_argument("--work", type=Path, default=None,
                        help="working folder with the caches (default: a temporary one, "
                        "removed at the end); reuse it to rerun in minutes")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per arm (default 2)")
    parser.add_argument("--share", type=float, default=0.5,
                        help="share of a drifted pool's images in the new look, for the "
                        "power (default 0.5)")
    parser.add_argument("--power-pools", type=int, default=7,
                        help="drifted pools per kind and seed (default 7)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (the targets are after two rounds)")
    if not 0.0 < args.share <= 1.0:
        parser.error("--share must be in (0, 1]")
    seeds = list(range(args.seed, args.seed + args.seeds))
    return run_in_work(
        args.work, args.out, prefix="hitl-bench-drift-", plot=plot,
        compute=lambda work, progress: run(seeds, work, rounds=args.rounds, share=args.share,
                                           power_pools=args.power_pools, threads=args.threads,
                                           device=args.device, on_progress=progress))


__all__ = ["main", "run"]
