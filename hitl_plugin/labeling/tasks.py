"""Conversions between our samples and Label Studio tasks (pure functions): what a person sees.

A task carries our own key, ``hitl_key = "<dag_id>|<run_id>|<image_id>"``, plus its parts, so
that results are mapped back through OUR ids and a retried submit finds what it already sent.
Boxes: COCO pixels ``[x, y, w, h]`` on our side; Label Studio stores percent of the image,
top-left corner, with ``original_width``/``original_height``.

**The labeling view** (:func:`label_config`, :func:`to_task`; Label Studio 1.23 mechanisms,
read in its source):

- The editable starting annotation is the prediction whose ``model_version`` is the
  project's: for a labeled image its **current labels** (region ids ``l<annotation id>``),
  for a pool image the model's boxes. Submitting it unchanged confirms those labels.
- The model's boxes are drawn beside them, faint and read-only, under a second control
  (``model``) that collect ignores, and they are a second prediction set
  (``<model_version> model``), which the task view lists as a tab to compare with or to
  duplicate into an editable annotation.
- Each suspected problem is tied to its box: the box's ``score`` is the suspicion's strength
  (shown in the Regions list) and a read-only per-region text (``issues``) says what is
  suspected. A likely missing object is tied to the model's box at that place.
- ``hitl_reason`` (shown as the task's header, one line per suspicion), ``hitl_score`` and
  ``hitl_kinds`` are task data: Data Manager columns to sort and filter on.
- Crowd regions (``iscrowd: 1`` annotations: one box around many objects) are drawn
  read-only under the ``model`` control (region ids ``c<annotation id>``), with the text
  :data:`CROWD_TEXT`; collect ignores them and the merge keeps them as they are.
- Each class has its own colour and hotkey (1-9, 0); the project's instructions
  (:data:`INSTRUCTIONS`) say what to do.

Nothing that comes back is trusted: :func:`region_to_box` validates a result region with
pydantic and raises :class:`InvalidResult` with a short reason.
"""

from __future__ import annotations

import math
from typing import Any, Literal
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hitl_plugin.exceptions import InvalidResult
from hitl_plugin.schemas import CorrectedBox, SelectedSample, Suspicion

#: The control and object tag names of our label config: ``label`` holds the boxes people
#: edit, ``model`` the model's boxes (read-only, for comparison), ``issues`` the suspicions.
FROM_NAME = "label"
MODEL_NAME = "model"
ISSUES_NAME = "issues"
TO_NAME = "image"
#: Distinct class colours (Sasha Trubetskoy's palette), in category order.
COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
           "#bfef45", "#fabed4", "#469990", "#dcbeff", "#9a6324", "#800000", "#aaffc3")
#: The colour of the model's boxes (read-only, for comparison).
MODEL_COLOUR = "#9e9e9e"
#: Keys of the first ten classes (letters are Label Studio's tool shortcuts).
HOTKEYS = "1234567890"
#: The project's instructions (shown before labeling and behind the "Instructions" button).
INSTRUCTIONS = (
    "<h3>Review the boxes of this image</h3>"
    "<p>The boxes you start from are the image's <b>current labels</b> (for a new image: the "
    "model's guesses). The line above the image says why it was chosen; a box with a "
    "number in the Regions list is suspected, and its text says what looks wrong.</p>"
    "<ul><li><b>Fix what is wrong</b>: change a class (select the box, press the class "
    "key), redraw a bad box, delete a box on nothing (select it, Backspace), draw a "
    "missing one.</li>"
    "<li><b>Leave what is right</b> as it is: a box you keep is recorded as confirmed.</li>"
    "<li><b>Submit</b> when the boxes match the image. Submitting nothing on an image that "
    "had labels is not taken as \"no objects\" unless the pipeline says so.</li>"
    "<li><b>Skip</b> when you are unsure: the labels stay as they were.</li></ul>"
    "<p>The grey boxes are the model's, for comparison only; the task view also lists "
    "them as a tab you can duplicate.</p>")
#: The read-only text on a crowd region.
CROWD_TEXT = ("crowd region (many {label} objects, too many to box one by one): kept as it "
              "is; do not draw boxes inside it")
#: How far (percent of the image side) a box may stick out and still be accepted (then clipped).
TOLERANCE_PCT = 0.5


def hitl_key(dag_id: str, run_id: str, image_id: int) -> str:
    """The idempotency key of one sample in one round."""
    return f"{dag_id}|{run_id}|{int(image_id)}"


def _quote(value: str) -> str:
    return quoteattr(str(value))


def label_config(class_names: list[str] | tuple[str, ...]) -> str:
    """The project's label config: the reason, the image, the editable boxes (a colour and a
    hotkey per class), the model's boxes (read-only) and the per-box suspicions."""
    if not class_names:
        raise ValueError("label_config needs at least one class name")
    labels, model = [], []
    for i, name in enumerate(class_names):
        colour = COLOURS[i % len(COLOURS)]
        key = f' hotkey="{HOTKEYS[i]}"' if i < len(HOTKEYS) else ""
        labels.append(f"<Label value={_quote(name)} background={_quote(colour)}{key}/>")
        # the model's boxes all in one grey, apart from the labels; explicit keys nobody
        # presses (Label Studio would give unkeyed labels 5, 6, ...)
        model.append(f"<Label value={_quote(name)} background={_quote(MODEL_COLOUR)} "
                     f'hotkey="ctrl+alt+shift+{HOTKEYS[i % len(HOTKEYS)]}"/>')
    return (f'<View><Header value="$hitl_reason" size="5" style="white-space: pre-wrap"/>'
            f'<Image name="{TO_NAME}" value="$image"/>'
            f'<RectangleLabels name="{FROM_NAME}" toName="{TO_NAME}">{"".join(labels)}'
            f"</RectangleLabels>"
            # the model's labels are for its boxes only: no chips under the image
            f'<View style="display: none"><RectangleLabels name="{MODEL_NAME}" '
            f'toName="{TO_NAME}" opacity="0.25" strokeWidth="1">{"".join(model)}'
            f"</RectangleLabels></View>"
            f'<TextArea name="{ISSUES_NAME}" toName="{TO_NAME}" perRegion="true" '
            f'displayMode="region-list" rows="1"/></View>')


def project_url(ls_url: str, project_id: int) -> str:
    """A Label Studio project's page that a person opens: its data manager (the tasks)."""
    return f"{ls_url.rstrip('/')}/projects/{int(project_id)}/data"


def image_url(file_name: str, prefix: str | None = None) -> str:
    """The URL Label Studio reads an image stored under ``<storage root>/images`` from.

    :param prefix: the connection's extra ``image_url_prefix`` (a Label Studio on another
        host: a static server or bucket that serves the images folder): the URL is
        ``prefix`` followed by the quoted file name. ``None``: the local-files URL
        ``/data/local-files/?d=images/<file>`` (Label Studio serves the storage root).
    """
    if prefix:
        return prefix + quote(file_name, safe="/")
    return "/data/local-files/?d=" + quote(f"images/{file_name}", safe="/")


def suspicion_text(s: Suspicion, names: dict[int, str]) -> str:
    """What one suspicion says to a person, with its strength."""
    label = names.get(s.label_category_id, "?") if s.label_category_id is not None else "?"
    pred = names.get(s.pred_category_id, "?") if s.pred_category_id is not None else "?"
    if s.kind == "class_swap":
        text = f"class swap? this {label} looks like a {pred}"
    elif s.kind == "bad_box":
        text = f"bad box? this {label} box looks off (overlap {s.iou or 0:.2f} with the model's)"
    elif s.kind == "spurious":
        text = f"spurious? the model sees no {label} here"
    else:
        text = f"missing? the model sees a {pred} here that has no label"
    return f"{text} ({s.score:.2f})"


def reason_text(sample: SelectedSample, names: dict[int, str]) -> str:
    """Why this image was chosen, for the task's header: one line per suspicion."""
    if sample.reason == "label_error" and sample.suspicions:
        lines = [f"Suspected label errors ({len(sample.suspicions)}):"]
        lines += [f"- {suspicion_text(s, names)}" for s in sample.suspicions[:5]]
        if len(sample.suspicions) > 5:
            lines.append(f"- ... {len(sample.suspicions) - 5} more (numbers in the Regions list)")
        return "\n".join(lines)
    if sample.reason == "uncertainty":
        return (f"A new image the model is unsure about (uncertainty {sample.score:.3f}): "
                "correct its boxes.")
    if sample.reason == "audit":
        return "A random audit sample: check every box."
    if sample.reason == "quota":
        return f"Chosen for its class (score {sample.score:.3f}): check every box."
    if sample.reason == "drift":
        return (f"New-looking data: this image is unlike the data the model was trained for "
                f"(out-of-distribution score {sample.score:.2f}); check every box, and add "
                "the objects the model missed.")
    return f"{sample.reason} (score {sample.score:.3f})"


def box_to_region(bbox: list[float], label: str, width: int, height: int, *,
                  score: float | None = None, region_id: str | None = None,
                  from_name: str = FROM_NAME) -> dict:
    """A COCO pixel box as a RectangleLabels region (percent, top-left)."""
    x, y, w, h = (float(v) for v in bbox)
    region: dict[str, Any] = {
        "from_name": from_name, "to_name": TO_NAME, "type": "rectanglelabels",
        "original_width": int(width), "original_height": int(height), "image_rotation": 0,
        "value": {"x": 100.0 * x / width, "y": 100.0 * y / height,
                  "width": 100.0 * w / width, "height": 100.0 * h / height,
                  "rotation": 0, "rectanglelabels": [label]},
    }
    if region_id is not None:
        region["id"] = region_id
    if score is not None:
        region["score"] = float(score)
    return region


def _label_id(ann_id: int) -> str:
    return f"l{int(ann_id)}"


def _text_region(box: dict, texts: list[str]) -> dict:
    """The read-only per-region text of ``box``: same id and geometry."""
    geometry = {k: v for k, v in box["value"].items() if k != "rectanglelabels"}
    return {"id": box["id"], "from_name": ISSUES_NAME, "to_name": TO_NAME, "type": "textarea",
            "readonly": True, "original_width": box["original_width"],
            "original_height": box["original_height"], "image_rotation": 0,
            "value": {**geometry, "text": texts}}


def accepted_text(score: float) -> str:
    """The text on a box the model auto-accepted (``selection.auto_accept``)."""
    return f"accepted by the model ({score:.2f}): fix or delete it if it is wrong"


def to_task(sample: SelectedSample, *, dag_id: str, run_id: str, model_version: str,
            names: dict[int, str], batch: str | None = None,
            accept_threshold: float | None = None,
            image_url_prefix: str | None = None) -> dict:
    """One selected sample as a Label Studio task (see the module docstring for the view).

    :param model_version: the model behind the predictions; the prediction with this version
        (the project's) is the editable starting annotation.
    :param names: category id -> class name (the label values of the project).
    :param batch: the submit batch, ``"<start>-<stop>"`` (``data.hitl_batch``), which lets a
        retried submit find its earlier tasks with one narrow query.
    :param accept_threshold: with ``selection.auto_accept``: on a pool image, the model's
        boxes at or above it are marked as accepted by the model (the person checks them).
    :param image_url_prefix: where Label Studio reads the images (see :func:`image_url`).
    """
    w, h = sample.width, sample.height
    model = [(i, p) for i, p in enumerate(sample.predictions) if p.category_id in names]
    issues: dict[str, list[tuple[float, str]]] = {}  # region id -> (strength, text)
    for s in sample.suspicions:
        if s.label_ann_id is not None and s.kind != "missing":
            target = _label_id(s.label_ann_id)
        else:  # a place without a label: the model's box there
            target = next((f"m{i}" for i, p in model if p.bbox == s.pred_bbox), None)
        if target is not None:
            issues.setdefault(target, []).append((s.score, suspicion_text(s, names)))
    if accept_threshold is not None and sample.split == "pool":
        for i, p in model:
            if p.score >= accept_threshold:
                issues.setdefault(f"m{i}", []).append((p.score, accepted_text(p.score)))

    def region(rid: str, bbox: list[float], category_id: int, control: str,
               score: float | None = None) -> list[dict]:
        found = issues.get(rid)
        if found:
            score = max(v for v, _ in found)
        out = [box_to_region(bbox, names[category_id], w, h, score=score, region_id=rid,
                             from_name=control)]
        if found:  # the per-region text: same id and geometry as the box, read-only
            out.append(_text_region(out[0], [t for _, t in sorted(found, reverse=True)]))
        return out

    if sample.split == "train":
        start = [r for lab in sample.labels if lab.category_id in names
                 for r in region(_label_id(lab.id), lab.bbox, lab.category_id, FROM_NAME)]
        faint = [r for i, p in model
                 for r in region(f"m{i}", p.bbox, p.category_id, MODEL_NAME, p.score)]
        for crowd in sample.crowd:  # shown so that nobody boxes its objects one by one
            if crowd.category_id in names:
                label = names[crowd.category_id]
                shape = box_to_region(crowd.bbox, label, w, h, region_id=f"c{int(crowd.id)}",
                                      from_name=MODEL_NAME)
                shape["readonly"] = True
                faint += [shape, _text_region(shape, [CROWD_TEXT.format(label=label)])]
    else:  # a new image: people start from the model's boxes
        start = [r for i, p in model
                 for r in region(f"m{i}", p.bbox, p.category_id, FROM_NAME, p.score)]
        faint = []
    kinds = sorted({s.kind for s in sample.suspicions})
    data = {
        "image": image_url(sample.file_name, image_url_prefix),
        "hitl_key": hitl_key(dag_id, run_id, sample.image_id),
        "hitl_dag_id": dag_id,
        "hitl_run_id": run_id,
        "hitl_image_id": int(sample.image_id),
        "hitl_reason": reason_text(sample, names),
        "hitl_split": sample.split,
        "hitl_selected_as": sample.reason,
        "hitl_score": round(float(sample.score), 4),
        "hitl_kinds": ",".join(kinds),
        # people who answer the task (Label Studio's per-task overlap is set to it too)
        "hitl_annotators": int(sample.annotators),
    }
    if batch is not None:
        data["hitl_batch"] = batch
    predictions = [{"model_version": model_version, "score": float(sample.score),
                    "result": start + faint}]
    if sample.split == "train" and model:
        predictions.append({"model_version": f"{model_version} model", "score":
                            float(sample.score), "result": [
                                box_to_region(p.bbox, names[p.category_id], w, h,
                                              score=p.score, region_id=f"p{i}")
                                for i, p in model]})
    return {"data": data, "predictions": predictions}


class _Value(BaseModel):
    model_config = ConfigDict(extra="ignore")

    x: float
    y: float
    width: float
    height: float
    rotation: float = 0.0
    rectanglelabels: list[str] = Field(min_length=1, max_length=1)

    @field_validator("x", "y", "width", "height", "rotation")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("not a finite number")
        return v


class _Region(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["rectanglelabels"]
    from_name: str = FROM_NAME
    to_name: str = TO_NAME
    value: _Value


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else err["msg"]


def region_to_box(region: Any, *, width: int, height: int, categories: dict[str, int],
                  tolerance_pct: float = TOLERANCE_PCT) -> CorrectedBox:
    """Validate one result region and convert it to a COCO pixel box.

    The image size is OURS (from the selection), never the service's. A box may stick out of
    the image by ``tolerance_pct`` percent of a side (rounding in the UI); it is then clipped.

    :param categories: class name -> our category id.
    :raises InvalidResult: unknown class, not finite, rotated, outside the image, empty.
    """
    if not isinstance(region, dict):
        raise InvalidResult(f"region is a {type(region).__name__}, not an object")
    if region.get("type") != "rectanglelabels":
        raise InvalidResult(f"unsupported region type {str(region.get('type'))[:40]!r}")
    try:
        parsed = _Region.model_validate(region)
    except ValidationError as exc:
        raise InvalidResult(f"malformed region: {_first_error(exc)}") from None
    if parsed.from_name != FROM_NAME:
        raise InvalidResult(f"region of an unknown control {parsed.from_name[:40]!r}")
    if parsed.to_name != TO_NAME:
        raise InvalidResult(f"region on an unknown object {parsed.to_name[:40]!r}")
    v = parsed.value
    label = v.rectanglelabels[0]
    if label not in categories:
        raise InvalidResult(f"unknown class {label[:40]!r}")
    if abs(v.rotation) > 1e-6:
        raise InvalidResult(f"rotated box ({v.rotation:g} degrees) cannot be a COCO box")
    if v.width <= 0 or v.height <= 0:
        raise InvalidResult(f"box has no area ({v.width:g}% x {v.height:g}%)")
    tol = tolerance_pct
    if v.x < -tol or v.y < -tol or v.x + v.width > 100 + tol or v.y + v.height > 100 + tol:
        raise InvalidResult(
            f"box outside the image (x={v.x:.2f}%, y={v.y:.2f}%, w={v.width:.2f}%, "
            f"h={v.height:.2f}%)")
    x0, y0 = max(0.0, v.x), max(0.0, v.y)
    x1, y1 = min(100.0, v.x + v.width), min(100.0, v.y + v.height)
    bbox = [x0 * width / 100.0, y0 * height / 100.0, (x1 - x0) * width / 100.0,
            (y1 - y0) * height / 100.0]
    if bbox[2] <= 0 or bbox[3] <= 0:
        raise InvalidResult("box has no area inside the image")
    return CorrectedBox(bbox=[round(c, 3) for c in bbox], category_id=categories[label])
