"""Peer for bench/src/bin/validate_10k.rs: PyYAML (libyaml CSafeLoader when available; YAML 1.1
like go-yaml v2) + jsonschema Draft 2020-12 with the same schema. Prints
`secs peak_kb schema_errors microservices`; the time covers parsing and validation only."""
import json
import resource
import sys
import time

import jsonschema
import yaml

Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def main():
    path, schema_path = sys.argv[1], sys.argv[2]
    with open(schema_path) as f:
        schema = json.load(f)
    validator = jsonschema.Draft202012Validator(schema)
    t0 = time.perf_counter()
    with open(path) as f:
        doc = yaml.load(f, Loader=Loader)
    errors = sum(1 for _ in validator.iter_errors(doc))
    secs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{secs:.4f} {peak} {errors} {len(doc.get('microservices') or {})}")


main()
