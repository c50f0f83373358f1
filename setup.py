from setuptools import setup

setup(cffi_modules=["build_native.py:ffibuilder", "build_xen_devices.py:ffibuilder"])
