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
int64_t vchan_ring_write(uint8_t *page, uint8_t *ring, uint32_t size, uint32_t prod,
                         size_t prod_offset, size_t cons_offset, size_t notify_offset,
                         const uint8_t *src, size_t length);
int vchan_ring_consumed(uint8_t *page, size_t cons_offset, uint32_t cons, size_t notify_offset);
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

#include <string.h>

#define VCHAN_NOTIFY_WRITE 1
#define VCHAN_NOTIFY_READ 2

/* Take our own notify bit: after a full barrier (our index update is visible before we
   decide), atomically clear the bit; true if the peer had asked to be told. */
static int take_notify(uint8_t *page, size_t notify_offset, uint8_t bit) {
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return (__atomic_fetch_and(page + notify_offset, (uint8_t)~bit, __ATOMIC_SEQ_CST) & bit) != 0;
}

/* One whole write, the hot path of send_all (measured: one call instead of five halves the
   per-write cost). Loads the peer's cons once (acquire: the data copy cannot start before it),
   copies what fits with wrap-around, publishes prod (release: data before index), then takes
   the notify bit. Returns (count << 1) | notify, or -1 - used when the peer's cons claims more
   than a ring's worth is in flight: a protocol violation, and nothing was touched. */
int64_t vchan_ring_write(uint8_t *page, uint8_t *ring, uint32_t size, uint32_t prod,
                         size_t prod_offset, size_t cons_offset, size_t notify_offset,
                         const uint8_t *src, size_t length) {
    uint32_t cons = __atomic_load_n((const uint32_t *)(page + cons_offset), __ATOMIC_ACQUIRE);
    uint32_t used = prod - cons;
    if (used > size)
        return -1 - (int64_t)used;
    size_t count = size - used;
    if (count > length)
        count = length;
    if (count == 0)
        return 0;
    uint32_t start = prod & (size - 1);
    size_t first = size - start;
    if (first > count)
        first = count;
    memcpy(ring + start, src, first);
    memcpy(ring, src + first, count - first);
    __atomic_store_n((uint32_t *)(page + prod_offset), prod + (uint32_t)count, __ATOMIC_RELEASE);
    return ((int64_t)count << 1) | take_notify(page, notify_offset, VCHAN_NOTIFY_WRITE);
}

/* After copying data out: full barrier (finish reading before the peer may overwrite), publish
   our new cons, then take the notify bit. Returns whether to notify the peer. */
int vchan_ring_consumed(uint8_t *page, size_t cons_offset, uint32_t cons, size_t notify_offset) {
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    __atomic_store_n((uint32_t *)(page + cons_offset), cons, __ATOMIC_RELEASE);
    return take_notify(page, notify_offset, VCHAN_NOTIFY_READ);
}
"""
)

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("trio_vchan._native", SOURCE, extra_compile_args=["-O2"])

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
