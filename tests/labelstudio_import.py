"""Import a `maskmine export --format labelstudio` folder into a running Label Studio server
and check what it stored: a project from labeling_config.xml, every task file imported, each
task's prediction read back through the API equal (region ids, brush RLE, scores) to the
export. Not run by CI (it needs a server); how it was run for the issue-20 commits:

    python3 -m venv /tmp/lsserver && /tmp/lsserver/bin/pip install label-studio   # 1.23.2
    LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=/ \\
        /tmp/lsserver/bin/label-studio start --no-browser --port 8089 \\
        --username admin@example.com --password pass123456 --user-token TOKEN
    # 1.23 refuses legacy tokens until the organisation allows them (label-studio shell):
    #   JWTSettings.objects.get_or_create(organization=org)[0].legacy_api_tokens_enabled = True
    python tests/labelstudio_import.py http://localhost:8089 TOKEN DEST

Exits 1 on any difference.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path


def call(base: str, token: str, method: str, path: str, body=None):
    request = urllib.request.Request(
        base + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()[:2000]


def regions(prediction: dict) -> list[tuple]:
    return [(r["id"], r["value"]["rle"], r["score"]) for r in prediction["result"]]


def main(base: str, token: str, dest: str) -> int:
    folder = Path(dest)
    config = (folder / "labeling_config.xml").read_text()
    status, project = call(
        base, token, "POST", "/api/projects", {"title": "maskmine", "label_config": config}
    )
    if status != 201:
        print("project refused:", status, project)
        return 1
    sent = {}
    for path in sorted(folder.glob("tasks-*.json")):
        tasks = json.loads(path.read_text())
        sent.update({t["data"]["image_uri"]: t for t in tasks})
        status, answer = call(base, token, "POST", f"/api/projects/{project['id']}/import", tasks)
        print("import", path.name, status, answer)
        if status != 201:
            return 1
    status, listed = call(base, token, "GET", f"/api/tasks?project={project['id']}&fields=all")
    stored = listed["tasks"] if isinstance(listed, dict) else listed
    failures = 0
    for task in stored:
        _, predictions = call(base, token, "GET", f"/api/predictions?task={task['id']}")
        mine = sent[task["data"]["image_uri"]]
        same = len(predictions) == 1 and regions(predictions[0]) == regions(mine["predictions"][0])
        failures += not same
        print(
            "task",
            task["id"],
            task["data"]["image"],
            len(regions(mine["predictions"][0])),
            "regions, equal:",
            same,
        )
    if len(stored) != len(sent):
        print(f"{len(sent)} tasks sent, {len(stored)} stored")
        return 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
