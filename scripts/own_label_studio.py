"""Walk through the README's "Use your own Label Studio" against a server set up like one.

Starts the embedded Label Studio in a temporary folder and treats it as someone else's
server: the organisation turns personal access tokens on and legacy tokens off, the user
makes a personal access token, and the images come from a static HTTP server on 127.0.0.1
through the connection's ``image_url_prefix`` (no local-files storage). Then it does what the
pipeline does with that connection: check it, create the project, import one task, and
confirms the task's image can be fetched the way the labeling view fetches it. Every step is
logged; the server and the temporary folder are removed at the end (``--keep`` keeps them).

Run: ``scripts/own_label_studio.sh`` (about a minute: the fresh server migrates its database).
The token is never printed: the connection with it is written to a file (mode 600).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import requests

STEP = {"n": 0, "began": time.monotonic()}


def step(text: str) -> None:
    STEP["n"] += 1
    print(f"\n[{STEP['n']}] {text}", flush=True)


def say(text: str) -> None:
    print(f"    {text}", flush=True)


def _png(path: Path) -> None:
    """A small image with one square, like the synthetic dataset's."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (160, 120), (235, 235, 235))
    ImageDraw.Draw(image).rectangle([40, 30, 90, 80], fill=(200, 40, 40))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def connection_commands(url: str, extra: dict) -> list[str]:
    """The two ways to create the Airflow connection, with the token left out."""
    add = ["airflow", "connections", "add", "label_studio_default",
           "--conn-type", "label_studio", "--conn-host", url,
           "--conn-password", "<your personal access token>",
           "--conn-extra", json.dumps(extra)]
    env = json.dumps({"conn_type": "label_studio", "host": url,
                      "password": "<your personal access token>", "extra": extra})
    return [" ".join(shlex.quote(a) if not a.startswith("<") else f"'{a}'" for a in add),
            f"export AIRFLOW_CONN_LABEL_STUDIO_DEFAULT='{env}'"]


def run(work: Path) -> None:
    from hitl_dev.labelstudio import (
        LabelStudioServer,
        StaticFiles,
        free_port,
        new_personal_token,
        token_settings,
    )

    images = work / "storage" / "images"
    step(f"Start a Label Studio to play the part of your own (data in {work})")
    server = LabelStudioServer(data_dir=work / "labelstudio", document_root=work / "unused",
                               port=free_port())
    watchdog = server.stop_with_process()
    began = time.monotonic()
    try:
        server.start(timeout=300)
        say(f"Label Studio 1.23 at {server.url}, ready after {time.monotonic() - began:.0f} s")
        with StaticFiles(images) as files:
            _walk(server, files, images, token_settings, new_personal_token)
    finally:
        step("Clean up")
        server.stop()
        watchdog.kill()
        watchdog.wait(timeout=10)
        say("Label Studio stopped; static image server stopped")


def _walk(server, files, images: Path, token_settings, new_personal_token) -> None:
    from hitl_plugin.exceptions import LabelStudioAuthError
    from hitl_plugin.hooks.label_studio import LabelStudioHook
    from hitl_plugin.labeling.client import LabelStudioClient
    from hitl_plugin.labeling.project import ensure_project_info
    from hitl_plugin.labeling.tasks import image_url

    url, bootstrap = server.url, server.headers()
    step("Organisation admin: Organization > API Tokens Settings")
    settings = token_settings(url, bootstrap, api_tokens_enabled=True)
    say(f"Personal Access Tokens: {'on' if settings['api_tokens_enabled'] else 'off'}")
    step("You: Account & Settings > Personal Access Token > Create New Token")
    pat = new_personal_token(url, bootstrap)
    say(f"got a personal access token ({len(pat)} characters, a JWT refresh token; "
        f"not shown)")
    settings = token_settings(url, bootstrap, legacy_api_tokens_enabled=False)
    say(f"then Legacy Tokens: {'on' if settings['legacy_api_tokens_enabled'] else 'off'}"
        f" (as in a new organisation)")
    refused = requests.get(f"{url}/api/current-user/whoami", headers=bootstrap, timeout=30)
    say(f"a legacy token is now refused: HTTP {refused.status_code}")

    step("Serve the images where that Label Studio can read them (a static server)")
    _png(images / "demo" / "square 1.png")
    prefix = files.url + "/"
    say(f"{images} served at {prefix}")

    step("Create the Airflow connection (password = the token)")
    extra = {"token_type": "personal", "image_url_prefix": prefix}
    for line in connection_commands(url, extra):
        say(line)
    conn_file = images.parent.parent / "connection.env"
    conn = {"conn_type": "label_studio", "host": url, "password": pat, "extra": extra}
    conn_file.touch(mode=0o600)
    conn_file.write_text(f"AIRFLOW_CONN_LABEL_STUDIO_DEFAULT='{json.dumps(conn)}'\n")
    os.environ["AIRFLOW_CONN_LABEL_STUDIO_DEFAULT"] = json.dumps(conn)
    say(f"(this run's connection, token included, is in {conn_file}, mode 600)")

    step("Check the connection (what the Test button of Admin > Connections runs)")
    hook = LabelStudioHook("label_studio_default")
    ok, message = hook.test_connection()
    say(f"{'OK' if ok else 'FAILED'}: {message}")
    if not ok:
        raise SystemExit(1)
    with LabelStudioClient(url, pat, token_type="legacy", retries=0,
                           conn_id="label_studio_default") as wrong:
        try:
            wrong.whoami()
        except LabelStudioAuthError as exc:
            say("the same token as token_type legacy fails clearly:")
            say(f"  {exc}")

    with hook.get_client() as client:
        step("Create the project (no local-files storage: the prefix is set)")
        info = ensure_project_info(client, title="hitl own Label Studio demo",
                                   class_names=["circle", "square", "triangle"],
                                   images_root=images, model_version="demo-m1",
                                   image_url_prefix=client.image_url_prefix)
        pid = info["id"]
        storages = client.local_storages(pid)
        say(f"project {pid}; local-files storages: {len(storages)}")

        step("Import one task whose image comes through the prefix")
        (task_id,) = client.import_tasks(pid, [{"data": {
            "image": image_url("demo/square 1.png", client.image_url_prefix)}}])
        task = client.request("GET", f"/api/tasks/{task_id}/")
        say(f"task {task_id}: data.image = {task['data']['image']}")

        step("Fetch the image as the labeling view does (XMLHttpRequest from LS's origin)")
        got = requests.get(task["data"]["image"], headers={"Origin": url}, timeout=30)
        say(f"HTTP {got.status_code}, {got.headers.get('Content-Type')}, "
            f"{len(got.content)} bytes, Access-Control-Allow-Origin: "
            f"{got.headers.get('Access-Control-Allow-Origin')}")
        if got.status_code != 200 or got.content != (images / "demo/square 1.png").read_bytes():
            raise SystemExit("the image is not fetchable through the prefix")

        step("Access tokens are short-lived (5 min): renewed before expiry and after a 401")
        first = client._access
        client._access_until = 0.0  # as at the end of its five minutes
        client.whoami()
        say(f"expired access token replaced: {client._access != first}")
        client._access = first.rsplit(".", 1)[0] + ".not-the-server-signature"
        client._access_until = time.time() + 3600
        client.whoami()
        say("a refused access token (401): renewed once, the call succeeded")
        say(f"open it: {url}/projects/{pid}/data?task={task_id}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary folder (the server is stopped anyway)")
    args = parser.parse_args(argv)
    from hitl_dev.labelstudio import exit_on_signals

    logging.basicConfig(level=logging.WARNING, format="    %(levelname)s %(name)s: %(message)s")
    exit_on_signals()
    work = Path(tempfile.mkdtemp(prefix="hitl-own-ls-"))
    try:
        run(work)
    finally:
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
            say(f"removed {work}")
    print(f"\nDone in {time.monotonic() - STEP['began']:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
