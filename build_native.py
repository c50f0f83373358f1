"""cffi builder for ``trio_vchan._native``: what Python cannot do safely on shared memory.

Python has no atomic read-modify-write on a byte and no memory barriers, and a peer in another
process (or domain) changes the shared page at any moment. These few C functions give the ring
core acquire loads, release stores, atomic fetch-or/fetch-and and the three barriers, with the
same meaning as libxenvchan's ``xen_mb``/``xen_rmb``/``xen_wmb``.
"""

from __future__ import annotations

import re
from pathlib import Path

from cffi import FFI

_HERE = Path(__file__).resolve().parent
_VERSION = re.search(
    r'^__version__: Final = "([^"]+)"',
    (_HERE / "trio_vchan" / "_version.py").read_text(),
    re.MULTILINE,
)
assert _VERSION is not None, "trio_vchan/_version.py has no version"
VERSION = _VERSION.group(1)

CDEF = """
const char *trio_vchan_native_version(void);
uint32_t vchan_load_acquire_u32(const uint8_t *base, size_t offset);
void vchan_store_release_u32(uint8_t *base, size_t offset, uint32_t value);
uint16_t vchan_load_u16(const uint8_t *base, size_t offset);
uint8_t vchan_load_u8(const uint8_t *base, size_t offset);
void vchan_store_u8(uint8_t *base, size_t offset, uint8_t value);
uint8_t vchan_fetch_or_u8(uint8_t *base, size_t offset, uint8_t bits);
uint8_t vchan_fetch_and_u8(uint8_t *base, size_t offset, uint8_t bits);
void vchan_full_barrier(void);
void vchan_read_barrier(void);
void vchan_write_barrier(void);
"""

SOURCE = (
    f'#define TRIO_VCHAN_NATIVE_VERSION "{VERSION}"\n'
    + r"""
#include <stdint.h>
#include <stddef.h>

const char *trio_vchan_native_version(void) { return TRIO_VCHAN_NATIVE_VERSION; }

/* Shared indices are naturally aligned (offsets 0..15 of a page-aligned mapping), so
   the __atomic builtins compile to plain aligned moves plus the ordering we ask for. */
uint32_t vchan_load_acquire_u32(const uint8_t *base, size_t offset) {
    return __atomic_load_n((const uint32_t *)(base + offset), __ATOMIC_ACQUIRE);
}
void vchan_store_release_u32(uint8_t *base, size_t offset, uint32_t value) {
    __atomic_store_n((uint32_t *)(base + offset), value, __ATOMIC_RELEASE);
}
uint16_t vchan_load_u16(const uint8_t *base, size_t offset) {
    return __atomic_load_n((const uint16_t *)(base + offset), __ATOMIC_RELAXED);
}
uint8_t vchan_load_u8(const uint8_t *base, size_t offset) {
    return __atomic_load_n(base + offset, __ATOMIC_ACQUIRE);
}
void vchan_store_u8(uint8_t *base, size_t offset, uint8_t value) {
    __atomic_store_n(base + offset, value, __ATOMIC_RELEASE);
}
uint8_t vchan_fetch_or_u8(uint8_t *base, size_t offset, uint8_t bits) {
    return __atomic_fetch_or(base + offset, bits, __ATOMIC_SEQ_CST);
}
uint8_t vchan_fetch_and_u8(uint8_t *base, size_t offset, uint8_t bits) {
    return __atomic_fetch_and(base + offset, bits, __ATOMIC_SEQ_CST);
}
void vchan_full_barrier(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
void vchan_read_barrier(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
void vchan_write_barrier(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }
"""
)

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("trio_vchan._native", SOURCE, extra_compile_args=["-O2"])

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
