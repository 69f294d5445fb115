"""Build the compiled modules (src/dicom_fastsend/_pdu.pyx, _walk.pyx) with Cython.

Metadata lives in pyproject.toml; this file only declares the extension.
FASTSEND_CYTHON_TRACE=1 builds with line tracing so the hot path can be
profiled and measured by coverage.
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

trace = os.environ.get("FASTSEND_CYTHON_TRACE") == "1"
macros = [("CYTHON_TRACE_NOGIL", "1")] if trace else []

extensions = [
    # PDU framing and parsing: the send path.
    Extension(
        "dicom_fastsend._pdu",
        ["src/dicom_fastsend/_pdu.pyx"],
        define_macros=macros,
        extra_compile_args=["-O3"],
    ),
    # The walk's stat loop. Its mtime must be the double os.stat makes, to the
    # bit: no fused multiply-add (-ffp-contract=off) where a target has one.
    # Optional: where it cannot be built (no fstatat or st_mtim), the walk
    # uses the pure-Python twin, with a warning (_twins.select).
    Extension(
        "dicom_fastsend._walk",
        ["src/dicom_fastsend/_walk.pyx"],
        define_macros=macros,
        extra_compile_args=["-O3", "-ffp-contract=off"],
        optional=True,
    ),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        annotate=trace,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "linetrace": trace,
        },
    )
)
