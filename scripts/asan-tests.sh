#!/usr/bin/env bash
# The compiled parsers under AddressSanitizer (issue 13: they read untrusted bytes as
# root).  Builds the extension modules with -fsanitize=address (ZT_ASAN=1, setup.py) in
# a scratch copy of the tree, so the .venv's own build is never touched, then runs the
# protocol tests and a fixed-size hypothesis fuzz run (ZT_FUZZ_EXAMPLES per protocol)
# against that build.  Any ASan report aborts the run and fails this script.
#   scripts/asan-tests.sh [pytest args...]
# Default: the protocol tests of the compiled parsers (COMPILED, test ids naming them)
# and every protocol test that is not parametrized by protocol; CPython under ASan with
# malloc for every object runs ~10x slower, so the rest would cost minutes of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
py=${PYTHON:-$root/.venv/bin/python}
examples=${ZT_FUZZ_EXAMPLES:-300}
# Protocols whose parser is compiled: one agent/protocols/_NAME.pyx each (_http1 is the
# registry's "http"; _http2 also serves "grpc").
mapfile -t COMPILED < <(cd agent/protocols && for f in _*.pyx; do
    n=${f#_}; n=${n%.pyx}
    case $n in http1) echo http ;; http2) echo http2; echo grpc ;; stream) ;; *) echo "$n" ;; esac
done)

libasan=$(gcc -print-file-name=libasan.so)
[ -e "$libasan" ] || { echo "asan-tests: no libasan.so (gcc's libasan8 package)" >&2; exit 1; }

work=$(mktemp -d /tmp/zt-asan.XXXXXX)
trap 'rm -rf "$work"' EXIT
# Sources, and the C that Cython generated from them for the .venv's build (it does not
# depend on the compiler flags): cythonize keeps a .c newer than its .pyx and
# regenerates any other, so only the C compiles are redone (Cython's translation was
# ~40 % of this build).  Built modules stay behind.
tar -C "$root" --exclude='*.so' --exclude='__pycache__' \
    -cf - setup.py pyproject.toml agent server proto tests |
    tar -C "$work" -xf -

echo "asan-tests: building with AddressSanitizer in $work"
(cd "$work" && ZT_ASAN=1 "$py" setup.py -q build_ext --inplace -j "$(nproc)" >build.log 2>&1) ||
    { cat "$work/build.log" >&2; exit 1; }

cd "$work"
if [ $# -eq 0 ]; then
    alt=$(IFS='|'; echo "${COMPILED[*]}")
    # Collected in the source tree: the ASan build cannot load before the runtime is.
    mapfile -t nodes < <(cd "$root" && "$py" -m pytest -q --collect-only -p no:cacheprovider \
        tests/protocols/test_proto_{bad_input,golden,properties,fuzz,registry}.py 2>/dev/null |
        grep -E "::[^[]*\$|\[(.*[-/])?($alt)([/-]|\])")
    [ ${#nodes[@]} -gt 0 ] || { echo "asan-tests: no tests collected" >&2; exit 1; }
    # The compiled stitcher against the reference on random timelines, the stitcher's
    # cases, and the compiled export side (Arrow columns, redaction) against theirs on
    # generated spans (the recorded demo stream is left to the normal run: minutes here).
    mapfile -t more < <(cd "$root" && "$py" -m pytest -q --collect-only -p no:cacheprovider \
        tests/stitch/test_compiled_vs_python.py tests/stitch/test_stitcher.py \
        tests/stitch/test_stitcher_connection.py tests/proto/test_columns_equivalence.py \
        tests/export/test_redact_compiled.py 2>/dev/null | grep "::" | grep -v recorded)
    [ ${#more[@]} -gt 0 ] || { echo "asan-tests: no stitcher/export tests collected" >&2; exit 1; }
    # The compiled event decoding and connection core (agent/probes/_events.pyx,
    # agent/conn/_core.pyx) on random event streams (~15 s under ASan), and the server's
    # SpanList wire reader (server/ingest/_spanlist.pyx) on truncated and corrupted
    # batches.
    # Also the compiled code that reads payload or record bytes outside the parsers:
    # protocol inference and SQL text (agent/protocols/_infer.pyx, _sqltext.pyx), the
    # stitcher's payload tokens, the hop index and N-span maker (agent/net/_hops.pyx,
    # _nspans.pyx), each against its reference on generated input (~4 s without ASan);
    # and the assembler fed events that make its compiled parts fail (contained).
    set -- "${nodes[@]}" "${more[@]}" tests/conn/test_compiled_core.py \
        tests/server/test_ingest_spanlist.py \
        tests/protocols/test_compiled_equivalence_infer.py tests/protocols/test_sqltext.py \
        tests/stitch/test_tokens_compiled.py tests/net/test_nspans.py tests/net/test_hop_index.py \
        tests/conn/test_assembler_contains_failures.py
fi
# Reports go to files: pytest captures stderr, and an aborted run would lose them.
export ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1:log_path=$work/asan-report:${ASAN_OPTIONS:-}
# CPython itself is not instrumented: the runtime has to be loaded first, and objects
# must come from malloc (not pymalloc's arenas) to get red zones around each one.
export LD_PRELOAD=$libasan${LD_PRELOAD:+:$LD_PRELOAD}
export PYTHONMALLOC=malloc
export ZT_ASAN_TREE=$work
# the scratch copy has no .git: the equivalence tests read the old rules from this one
export ZT_SOURCE_REPO=${ZT_SOURCE_REPO:-$root}
export ZT_FUZZ_EXAMPLES=$examples
export ZT_STITCH_EXAMPLES=${ZT_STITCH_EXAMPLES:-$examples}
# The modules under test must be the ASan build of this scratch tree, not the .venv's.
"$py" - <<'EOF'
import os
import sys

sys.path.insert(0, os.getcwd())
import importlib
import pathlib

for src in sorted([*pathlib.Path("agent").rglob("*.pyx"), *pathlib.Path("server").rglob("*.pyx")]):
    mod = importlib.import_module(str(src.with_suffix("")).replace(os.sep, "."))
    path = os.path.realpath(mod.__file__)
    assert path.startswith(os.getcwd() + "/"), f"not the scratch ASan build: {path}"
    assert b"__asan_init" in open(path, "rb").read(), f"{path} is not built with ASan"
    print("asan-tests: testing", path)
EOF
status=0
"$py" -m pytest -q -p no:cacheprovider "$@" || status=$?
if compgen -G "$work/asan-report*" >/dev/null; then
    cat "$work"/asan-report* >&2
    echo "asan-tests: AddressSanitizer reported errors (above)" >&2
    exit 1
fi
exit "$status"
