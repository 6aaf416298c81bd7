"""``hitl dataset``: import a COCO or YOLO folder as a new dataset, export a version (COCO or
YOLO, with provenance), list versions, show a manifest, revert to an earlier version."""

from __future__ import annotations

import argparse
import json
import sys

from hitl_plugin.config import storage_root
from hitl_plugin.dataset.store import DatasetStore
from hitl_plugin.exceptions import CocoError, DatasetError


def main(argv: list[str], prog: str = "hitl dataset") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--root", help="storage root (default: $HITL_HOME or ./.hitl)")
    sub = parser.add_subparsers(dest="action", required=True)
    imp = sub.add_parser("import", help="create v0001 from a COCO folder (DIR/images + "
                         "DIR/annotations/*.json) or a YOLO one (DIR/data.yaml)")
    imp.add_argument("name")
    imp.add_argument("source", help="folder with images/ and annotations/{train,val,pool}.json, "
                     "or with a data.yaml (names, train, val, optional pool)")
    imp.add_argument("--copy", action="store_true", help="copy images instead of hard-linking")
    exp = sub.add_parser("export", help="write a version out (COCO or YOLO, with "
                         "provenance.json) for other tools; `import` reads it back")
    exp.add_argument("name")
    exp.add_argument("version", nargs="?", help="the version (default: LATEST)")
    exp.add_argument("--format", required=True, choices=("coco", "yolo"), dest="fmt",
                     help="coco: annotations/{train,val,pool}.json + images/; yolo: data.yaml "
                     "+ images/<split>/ + labels/<split>/ (crowd regions left out)")
    exp.add_argument("--out", required=True, help="the folder to write (absent or empty)")
    exp.add_argument("--force", action="store_true",
                     help="replace a non-empty --out (once the export is complete)")
    exp.add_argument("--link", action="store_true",
                     help="hard-link the images instead of copying them (for read-only tools)")
    lst = sub.add_parser("versions", help="list the versions of a dataset")
    lst.add_argument("name")
    show = sub.add_parser("show", help="print a version's manifest (LATEST by default)")
    show.add_argument("name")
    show.add_argument("version", nargs="?")
    rev = sub.add_parser("revert", help="publish a new version equal to an earlier one "
                         "(takes a bad round back; deletes nothing)")
    rev.add_argument("name")
    rev.add_argument("version", help="the version to return to")
    rev.add_argument("--reason", required=True, help="why (kept in the new manifest)")
    rep = sub.add_parser("replay", help="merge the rounds after a version again, without one "
                         "annotator's answers or without one round (deletes nothing)")
    rep.add_argument("name")
    rep.add_argument("start", help="the version before the first affected round")
    who = rep.add_mutually_exclusive_group(required=True)
    who.add_argument("--without-annotator", help="leave out this annotator's answers")
    who.add_argument("--without-round", help="leave out this round (its key, dag_id|run_id)")
    rep.add_argument("--reason", required=True, help="why (kept in the new manifest)")
    args = parser.parse_args(argv)

    store = DatasetStore(args.root or storage_root(), args.name)
    try:
        if args.action == "import":
            version = store.import_source(args.source, link=not args.copy)
            print(json.dumps(store.manifest(version), indent=1))
        elif args.action == "export":
            from hitl_plugin.dataset.portable import export_version

            done = export_version(store, args.version, fmt=args.fmt, out=args.out,
                                  force=args.force, link=args.link)
            done.pop("image_ids", None)  # in the provenance file; too long for a terminal
            print(json.dumps(done, indent=1))
        elif args.action == "versions":
            latest = store.latest()
            for version in store.versions():
                m = store.manifest(version)
                mark = "*" if version == latest else " "
                print(f"{mark} {version}  parent={m['parent']}  round={m['round']}  {m['counts']}")
        elif args.action == "revert":
            version = store.revert(args.version, reason=args.reason)
            print(json.dumps(store.manifest(version), indent=1))
        elif args.action == "replay":
            from hitl_plugin.dataset.replay import replay_without

            version = replay_without(store, start=args.start, reason=args.reason,
                                     annotator=args.without_annotator,
                                     round_key=args.without_round)
            print(json.dumps(store.manifest(version), indent=1))
        else:
            version = args.version or store.require_latest()
            print(json.dumps(store.verify(version), indent=1))
    except (DatasetError, CocoError) as exc:
        print(f"hitl dataset: {exc}", file=sys.stderr)
        return 1
    return 0
