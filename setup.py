"""Build of the compiled code (Cython 3 -> C -> extension modules): the agent's per-event
path and the server's protobuf wire reader.

Metadata lives in pyproject.toml; this file only declares the extension modules, so
that `pip install -e .` (scripts/setup.sh) and `pip install .` (the Docker image)
compile them with the system C compiler through setuptools' build backend.

ZT_ASAN=1 builds them with AddressSanitizer (scripts/asan-tests.sh runs the parser
tests and a fuzz run against that build).
"""

from __future__ import annotations

import os
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# Both steps on every core: Cython's translation and the C/C++ compiles of ~25 modules
# took ~3 minutes of a fresh CI run's 20 one after the other (pip never passes -j).
JOBS = os.cpu_count() or 1

# Every .pyx under agent/ and server/ is a compiled module named after its path, so a
# new compiled module is one new file (agent/protocols/_redis.pyx ->
# agent.protocols._redis; server/ingest/_spanlist.pyx, the SpanList wire reader).
MODULES = sorted(
    (str(p.with_suffix("")).replace(os.sep, "."), str(p))
    for d in ("agent", "server") for p in Path(d).rglob("*.pyx"))


def extensions() -> list[Extension]:
    """The extension modules, with AddressSanitizer flags when ZT_ASAN=1."""
    cflags = ["-O2"]
    ldflags: list[str] = []
    if os.environ.get("ZT_ASAN") == "1":
        # -O1 keeps ASan's reports readable; frame pointers give whole stacks.
        cflags = ["-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer"]
        ldflags = ["-fsanitize=address"]
    return [Extension(name, [src], extra_compile_args=cflags, extra_link_args=ldflags)
            for name, src in MODULES]


class ParallelBuildExt(build_ext):
    """build_ext compiling modules in parallel unless told otherwise (-j)."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if not self.parallel:
            self.parallel = JOBS


setup(ext_modules=cythonize(extensions(), quiet=True, nthreads=JOBS,
                            compiler_directives={"language_level": "3"}),
      cmdclass={"build_ext": ParallelBuildExt})
