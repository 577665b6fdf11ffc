"""Validates OCSF events (one JSON object per line, on stdin) against the OCSF schema.

Each event is checked against the JSON Schema of its class (by `class_uid`), generated from
the OCSF schema release that `ocsf-json-schema` ships (no network), with `jsonschema`'s
Draft 2020-12 validator: required attributes, types, enums, and no attribute the class does
not define (the generated schemas set additionalProperties: false).

usage: python validate.py OCSF_VERSION < events.jsonl
prints one JSON object: {"events": N, "classes": {"3002": n, ...}, "errors": [...]}
exit 0 when every event is valid, 1 otherwise.
"""
import json
import sys

from jsonschema import Draft202012Validator
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema


def main() -> int:
    version = sys.argv[1]
    schema = OcsfJsonSchemaEmbedded(get_ocsf_schema(version=version))
    validators = {}
    counts = {}
    errors = []
    n = 0
    for line_no, line in enumerate(sys.stdin, 1):
        if not line.strip():
            continue
        n += 1
        event = json.loads(line)
        uid = event.get("class_uid")
        if uid not in validators:
            name = schema.lookup_class_name_from_uid(class_uid=uid)
            validators[uid] = Draft202012Validator(schema.get_class_schema(class_name=name, profiles=[]))
        counts[str(uid)] = counts.get(str(uid), 0) + 1
        for err in validators[uid].iter_errors(event):
            path = "/".join(str(p) for p in err.absolute_path)
            errors.append(f"line {line_no} (class {uid}) at /{path}: {err.message}")
    print(json.dumps({"events": n, "classes": counts, "errors": errors[:50], "error_count": len(errors)}))
    return 0 if not errors and n > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
