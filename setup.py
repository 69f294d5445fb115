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
    Extension(
        f"dicom_fastsend.{name}",
        [f"src/dicom_fastsend/{name}.pyx"],
        define_macros=macros,
        extra_compile_args=["-O3"],
    )
    # _pdu: PDU framing and parsing (the send path); _walk: the walk's stat loop.
    for name in ("_pdu", "_walk")
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
