"""Peer for bench/src/bin/validate_10k.rs: PyYAML (libyaml CSafeLoader when available; YAML 1.1
like go-yaml v2) + jsonschema Draft 2020-12 with the same schema. Prints
`secs peak_kb cpu_secs schema_errors microservices`; the times (wall, and CPU = user + system)
cover parsing and validation only."""
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
    c0 = time.process_time()
    t0 = time.perf_counter()
    with open(path) as f:
        doc = yaml.load(f, Loader=Loader)
    errors = sum(1 for _ in validator.iter_errors(doc))
    secs = time.perf_counter() - t0
    cpu = time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{secs:.4f} {peak} {cpu:.4f} {errors} {len(doc.get('microservices') or {})}")


main()
