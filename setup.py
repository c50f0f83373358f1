"""The cffi modules, and the Xen-library shim of ``trio-vchan sim --xen-libs`` (_xenshim).

The shim's two libraries are built as setuptools Extensions, so that the usual build, wheel and
editable installs compile and place them with the modules, with the same compiler; only their
file names differ from a module's. They are never imported, only ``LD_PRELOAD``ed into a C
program, and they need only a C compiler and libc's headers (no Xen headers: xen_abi.h). They
are optional: an install where they do not compile still gets the Python package, and
``--xen-libs`` then says that they were not built.
"""

from __future__ import annotations

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

PACKAGE = "trio_vchan._xenshim"
SHIM_DIR = "trio_vchan/_xenshim"
#: Source (and Extension) name -> the file name that trio_vchan/_xenshim/__init__.py looks for.
LIBRARIES = {"xenshim": "libtrio-vchan-xenshim.so", "xcstub": "libtrio-vchan-xcstub.so"}


class BuildExt(build_ext):
    """build_ext, naming the shim's libraries as shared libraries rather than as modules."""

    def get_ext_filename(self, fullname: str) -> str:
        # Asked with the full dotted name and (distutils' get_ext_fullpath) with the last part.
        *package, name = fullname.split(".")
        if name in LIBRARIES and package in ([], PACKAGE.split(".")):
            return os.path.join(*package, LIBRARIES[name])
        return str(super().get_ext_filename(fullname))


def library(name: str) -> Extension:
    return Extension(
        f"{PACKAGE}.{name}",
        sources=[f"{SHIM_DIR}/{name}.c"],
        depends=[f"{SHIM_DIR}/xen_abi.h"],
        # Only the Xen functions (and munmap) are exported; gnu11 for the GNU extensions used.
        extra_compile_args=["-std=gnu11", "-O2", "-fvisibility=hidden"],
        optional=True,
    )


setup(
    cffi_modules=["build_native.py:ffibuilder", "build_xen_devices.py:ffibuilder"],
    ext_modules=[library(name) for name in LIBRARIES],
    cmdclass={"build_ext": BuildExt},
)
