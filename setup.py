"""Build script for the optional C extensions; everything else is in pyproject.toml.

``proxy.wire._scan`` walks server message headers, decodes Bind
messages, walks the client messages that need no policy decision and
hands the recording the server's watched messages in C
(see proxy/wire/server_stream.py, proxy/wire/decode.py and
proxy/wire/framing.py); ``policy.sql._maskkey`` builds the
masked-literal cache key in C (see policy/sql/masked.py);
``proxy.audit._recline`` builds a recording's statement line and its
hash in C, and records a tracker's statement in one call (see
proxy/audit/record.py and proxy/audit/writer.py); ``proxy.session._track`` is the
statement tracker (see proxy/session/track.py).  All are optional: without a C
compiler (or Python headers) the build prints a warning and pgwarden
uses the pure-Python versions, which are the reference.
``pip install -e .`` builds them in place.
"""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("proxy.wire._scan", ["proxy/wire/_scan.c"], optional=True),
    Extension("policy.sql._maskkey", ["policy/sql/_maskkey.c"], optional=True),
    Extension("proxy.audit._recline", ["proxy/audit/_recline.c"], optional=True),
    Extension("proxy.session._track", ["proxy/session/_track.c"], optional=True),
])
