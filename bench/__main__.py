"""Run every benchmark module that is present, in turn."""

import importlib
import sys

MODULES = ["bench.bench_probes", "bench.bench_protocols", "bench.bench_replay",
           "bench.bench_pipeline", "bench.bench_fidelity",
           "bench.bench_server"]

if __name__ == "__main__":
    only = sys.argv[1:]
    for name in MODULES:
        if only and name.split(".")[-1] not in only:
            continue
        try:
            mod = importlib.import_module(name)
        except ImportError as e:
            print(f"# {name}: not present ({e})")
            continue
        sys.argv = [name]  # each benchmark parses its own options: defaults here
        mod.main()
