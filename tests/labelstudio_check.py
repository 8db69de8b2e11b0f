"""Check `maskmine export --format labelstudio` output with Label Studio's own validator.

Run with a Python that has `label-studio-sdk` (it pins numpy < 2.3 through opencv, so it
lives in its own venv, not beside Beam): `python tests/labelstudio_check.py DEST`. Prints a
JSON summary; exits 1 if the config or any prediction fails LabelInterface's checks.
"""

import json
import sys
from pathlib import Path

from label_studio_sdk.label_interface import LabelInterface


def main(dest: str) -> int:
    folder = Path(dest)
    interface = LabelInterface((folder / "labeling_config.xml").read_text())
    interface.validate()  # raises on a config Label Studio would refuse
    errors, tasks, regions = [], 0, 0
    for path in sorted(folder.glob("tasks-*.json")):
        for task in json.loads(path.read_text()):
            tasks += 1
            for obj in interface.objects:  # every object tag's $variable is in the data
                if obj.value_is_variable and task["data"].get(obj.value_name) is None:
                    errors.append(f"{path.name}: task without data.{obj.value_name}")
            for prediction in task.get("predictions", []):
                regions += len(prediction["result"])
                found = interface.validate_prediction(prediction, return_errors=True)
                errors += [f"{path.name}: {e}" for e in found]
    print(json.dumps({"tasks": tasks, "regions": regions, "errors": errors[:20]}))
    return 1 if errors or not tasks else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
