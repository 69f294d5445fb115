# cython: language_level=3
"""Compiled stat loop of the walk; ``_walk_py.py`` is the reference with the same API.

fstatat(2) on one descriptor of the directory for every name: no path is
resolved from the root again, and no os.stat_result is built. The mtime is
computed as CPython's os.stat computes st_mtime (seconds + nanoseconds * 1e-9,
in that order, as doubles), so the two agree to the bit: the walk compares it
with the value a previous run stored.
"""

from libc.errno cimport errno
from libc.string cimport strlen

cdef extern from "Python.h":
    bytes PyUnicode_EncodeFSDefault(object unicode)

cdef extern from "<fcntl.h>" nogil:
    int AT_FDCWD
    int O_RDONLY
    int O_DIRECTORY
    int O_CLOEXEC
    int c_open "open"(const char *path, int flags)

cdef extern from "<unistd.h>" nogil:
    int c_close "close"(int fd)

cdef extern from "<sys/stat.h>" nogil:
    cdef struct timespec:
        long tv_sec
        long tv_nsec

    cdef struct stat:
        long long st_size
        timespec st_mtim

    int fstatat(int dirfd, const char *pathname, stat *statbuf, int flags)


cdef bytes _encoded(str name):
    cdef bytes encoded = PyUnicode_EncodeFSDefault(name)
    if <size_t>len(encoded) != strlen(encoded):
        raise ValueError("embedded null byte")  # as os.stat says it
    return encoded


def stat_names(str directory, names):
    cdef int fd = AT_FDCWD
    cdef int failed
    cdef stat status
    cdef bytes encoded
    cdef const char *path
    cdef list out = []
    cdef double mtime
    if directory:
        encoded = _encoded(directory)
        fd = c_open(encoded, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd < 0:
            return [errno] * len(names)
    try:
        for name in names:
            encoded = _encoded(name)
            path = encoded
            # The GIL is let go as os.stat does: on a slow network file
            # system one stat can take long, and other threads (the Dask
            # client's, under --cluster) must go on meanwhile.
            with nogil:
                failed = fstatat(fd, path, &status, 0)
                if failed:
                    failed = errno  # read before anything else can set it
            if failed:
                out.append(failed)
                continue
            mtime = <double>status.st_mtim.tv_sec + <double>status.st_mtim.tv_nsec * 1e-9
            out.append((status.st_size, mtime))
        return out
    finally:
        if fd != AT_FDCWD:
            c_close(fd)
