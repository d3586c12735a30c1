"""Build script for the one optional C extension; everything else is in pyproject.toml.

``proxy.wire._scan`` walks server message headers in C (see
proxy/wire/server_stream.py).  It is optional: without a C compiler (or
Python headers) the build prints a warning and pgwarden uses the
pure-Python walk, which is the reference.  ``pip install -e .`` builds it
in place.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("proxy.wire._scan", ["proxy/wire/_scan.c"], optional=True)])
