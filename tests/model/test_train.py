"""Training: weighted sampling, per-epoch records, resume after kill -9, warm-start choice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from hitl_dev.base_checkpoint import tiny_export
from hitl_plugin.paths import ExportPaths


def _trainer(tmp_path, data, weights, *, weight_mosaic=True):
    from hitl_plugin.model import yolo
    from hitl_plugin.model.train import sample_weights

    yolo.import_ultralytics()
    weights_of = (lambda files: sample_weights(files, weights)) if weights else None
    cls = yolo.make_trainer_class(weights_of, seed=0, weight_mosaic=weight_mosaic)
    trainer = cls(overrides=dict(
        model="yolov8n.yaml", data=str(data), imgsz=64, batch=8, device="cpu", workers=0,
        epochs=1, amp=False, plots=False, project=str(tmp_path / "runs"), name="t",
        exist_ok=True, seed=0, verbose=False))
    trainer.model = trainer.get_model(cfg="yolov8n.yaml", weights=None, verbose=False)
    return trainer


def _ratio(counts: Counter, heavy: int, n: int) -> float:
    light = [counts[i] for i in range(n) if i != heavy]
    return counts[heavy] / (sum(light) / len(light))


def test_weighted_sampler_draws_in_proportion_to_weights(tmp_path):
    """Weight 4 vs 1: drawn ~4x as often as the main image, and ~4x overall (with the
    mosaic partners) when partner choice is weighted too."""
    data, _, _ = tiny_export(tmp_path, train=16, val=4, imgsz=64, seed=5)
    rows = json.loads(ExportPaths(data.parent).weights.read_text())
    heavy_path = rows[3]["path"]
    trainer = _trainer(tmp_path, data, {heavy_path: 4.0})
    loader = trainer.get_dataloader(trainer.data["train"], batch_size=8, rank=-1, mode="train")
    dataset = loader.dataset
    heavy = dataset.im_files.index(heavy_path)
    n = len(dataset)

    main = Counter()
    for _ in range(200):  # the sampler alone: cheap, so many epochs
        main.update(int(i) for i in loader.sampler)
    assert sum(main.values()) == 200 * n  # num_samples = len(dataset) per epoch
    main_ratio = _ratio(main, heavy, n)
    assert 3.2 <= main_ratio <= 4.8, main_ratio

    uses = Counter()
    original = dataset.get_image_and_label

    def counting(index):
        uses[int(index)] += 1
        return original(index)

    dataset.get_image_and_label = counting
    for _ in range(8):  # real batches: main image + 3 mosaic partners each
        for _batch in loader:
            pass
    assert sum(uses.values()) == 8 * n * 4
    overall = _ratio(uses, heavy, n)
    print(f"weighted sampler: main-image ratio {main_ratio:.2f}, overall {overall:.2f}")
    assert 3.2 <= overall <= 4.8, overall


def test_unweighted_mosaic_partners_dilute_the_weight(tmp_path):
    """Without weighting the partners, the overall ratio falls well below the weight."""
    data, _, _ = tiny_export(tmp_path, train=16, val=4, imgsz=64, seed=5)
    rows = json.loads(ExportPaths(data.parent).weights.read_text())
    trainer = _trainer(tmp_path, data, {rows[3]["path"]: 4.0}, weight_mosaic=False)
    loader = trainer.get_dataloader(trainer.data["train"], batch_size=8, rank=-1, mode="train")
    dataset = loader.dataset
    heavy = dataset.im_files.index(rows[3]["path"])
    uses = Counter()
    original = dataset.get_image_and_label
    dataset.get_image_and_label = lambda i: (uses.update([int(i)]), original(i))[1]
    for _ in range(8):
        for _batch in loader:
            pass
    diluted = _ratio(uses, heavy, len(dataset))
    print(f"unweighted partners: overall ratio {diluted:.2f}")
    assert diluted < 3.0, diluted


def test_sample_weights_match_by_path_realpath_or_stem(tmp_path):
    from hitl_plugin.model.train import sample_weights

    real = tmp_path / "real.png"
    real.write_bytes(b"x")
    link = tmp_path / "12.png"
    link.symlink_to(real)
    files = [str(link), str(tmp_path / "13.png"), str(tmp_path / "14.png")]
    weights = sample_weights(files, {str(real): 2.0, "13": 3.0})
    assert weights == [2.0, 3.0, 1.0]
    with pytest.raises(ValueError):
        sample_weights(files[:1], {str(link): 0.0})


RUNNER = textwrap.dedent(
    r'''
    import json, logging, sys
    from pathlib import Path
    logging.basicConfig(level=logging.INFO)
    from hitl_plugin.model.train import train
    from hitl_plugin.paths import ExportPaths
    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    rows = json.loads(ExportPaths(data.parent).weights.read_text())
    weights = {row["path"]: 3.0 if i % 4 == 0 else 1.0 for i, row in enumerate(rows)}
    # weighted: the custom trainer class must be passed again on resume
    result = train(data, out, epochs=4, imgsz=64, batch=8, seed=1, image_weights=weights)
    print("RESULT=" + json.dumps(result))
    '''
)


def _run(script: Path, data: Path, out: Path, timeout: int = 300) -> dict:
    proc = subprocess.run([sys.executable, str(script), str(data), str(out)],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT=")][-1]
    return json.loads(line[len("RESULT="):])


@pytest.mark.slow
def test_training_killed_mid_way_resumes_at_its_epoch(tmp_path):
    from hitl_plugin.model.train import read_epochs
    from hitl_plugin.model.yolo import checkpoint_state
    from hitl_plugin.paths import ModelPaths

    data, _, _ = tiny_export(tmp_path, train=16, val=4, imgsz=64, seed=6)
    script = tmp_path / "run.py"
    script.write_text(RUNNER)
    out = tmp_path / "model"
    proc = subprocess.Popen([sys.executable, str(script), str(data), str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    epochs_file = ModelPaths(out).epochs
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if epochs_file.is_file() and len(epochs_file.read_text().splitlines()) >= 2:
                break
            time.sleep(0.1)
        assert proc.poll() is None, "training ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    before = read_epochs(out)
    assert [r["epoch"] for r in before][:2] == [0, 1]
    state = checkpoint_state(ModelPaths(out).last)
    assert state["state"] in ("resumable", "corrupt"), state

    result = _run(script, data, out)
    assert result["resumed_from_epoch"] is not None and result["resumed_from_epoch"] >= 2
    rows = read_epochs(out)
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    raw = [json.loads(line)["epoch"] for line in epochs_file.read_text().splitlines()]
    assert raw.count(0) == 1, raw  # epoch 0 never ran again
    assert all(r["checkpoint"] for r in rows)
    assert checkpoint_state(Path(result["last"]))["state"] == "finished"
    assert Path(result["checkpoint"]).is_file()

    # Finished: a third call returns the result and never resumes a stripped checkpoint.
    again = _run(script, data, out)
    assert again == result
    assert len(epochs_file.read_text().splitlines()) == len(raw)


def test_architecture_must_be_a_yaml():
    from hitl_plugin.model.train import _architecture_path

    with pytest.raises(ValueError, match="downloaded"):
        _architecture_path("yolov8n.pt")
    assert _architecture_path("yolov8n.yaml") == "yolov8n.yaml"


def test_threads_are_capped_by_cpus_and_by_other_load(monkeypatch):
    from hitl_plugin.model import train as train_mod

    monkeypatch.setattr(train_mod.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(train_mod.os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    assert train_mod.choose_threads(2) == 2 and train_mod.choose_threads(8) == 2
    monkeypatch.setattr(train_mod.os, "getloadavg", lambda: (4.5, 0.0, 0.0))
    assert train_mod.choose_threads(2) == 1  # busy cores: spinning threads collapse
    assert train_mod.choose_threads(2, adapt=False) == 2


@pytest.mark.slow
def test_epochs_without_validation_are_logged_as_not_validated(tmp_path, caplog):
    """With per-epoch validation off (the benchmarks), an epoch's metrics are not zeros."""
    import logging

    from hitl_plugin.model.train import read_epochs, train

    data, _, _ = tiny_export(tmp_path, train=8, val=4, imgsz=64, seed=9)
    with caplog.at_level(logging.INFO, logger="hitl_plugin.model.yolo"):
        train(data, tmp_path / "model", epochs=2, imgsz=64, batch=8, device="cpu",
              extra_args={"val": False})
    rows = read_epochs(tmp_path / "model")
    assert [r["map50"] is None for r in rows] == [True, False]  # the last epoch is validated
    assert "epoch 1/2: loss" in caplog.text and "not validated" in caplog.text
