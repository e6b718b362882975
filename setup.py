"""The one compiled part: the SFU's per-copy loop (server/sfu/_fanout.c).

Optional: without a C compiler the build skips it and the SFU forwards in
Python (server/sfu/fastpath.py says which path runs). scripts/setup.sh
installs gcc so that a fresh machine builds it.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("server.sfu._fanout", ["server/sfu/_fanout.c"],
                             extra_compile_args=["-O2", "-Wall"], optional=True)])
