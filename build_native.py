"""cffi builder for ``trio_vchan._native``: the ring's steps, on shared memory, in C.

Python has no atomic read-modify-write on a byte and no memory barriers, and a peer in another
process (or domain) changes the shared page at any moment. So each step of the data path is one
C call over a ``struct vchan_end`` (this side's private copy of its indices and the offsets of
its role), with libxenvchan's orderings (``xen_mb``/``xen_rmb``/``xen_wmb``):

* ``vchan_send`` and ``vchan_receive``: the peer's live byte, the peer's index (loaded once and
  checked), the copy, our index published, the notify decision; one call per step. A large copy
  is published in parts, and a peer that waits is told after the first (see ``ring_step``).
* ``vchan_peek``/``vchan_consume`` and ``vchan_commit``: the same steps split around a copy done
  by the caller (into a new ``bytes``, or between the ring and a file descriptor).
* ``vchan_request_data``/``vchan_request_space``: ask the peer for an event, then look again.

And ``vchan_map_pages``/``vchan_unmap_pages``, ``mmap(2)`` and ``munmap(2)`` for
:mod:`trio_vchan._pages`: a mapping that keeps no file descriptor open.

Every shared-memory access is preceded by ``STEP(VCHAN_STEP_ACCESS)``, which compiles to nothing
here; the interleaving checker (tests/test_interleavings.py) compiles this same source with
``STEP`` calling back into Python, so that it explores the shipped code step by step.
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

#: This side's private state, the one argument of every step: in the cdef and the source both.
STRUCT = """
struct vchan_end {
    uint8_t *page;
    uint8_t *read_ring;
    uint8_t *write_ring;
    uint32_t read_size;
    uint32_t write_size;
    uint32_t cons;  /* our consumer index on the ring we read: private, never read back */
    uint32_t prod;  /* our producer index on the ring we write: private, never read back */
    uint16_t read_prod, read_cons, write_prod, write_cons;
    uint16_t own_notify, peer_notify, own_live, peer_live;
    uint8_t max_peer_live;  /* 2 where the peer may still be "waiting" (a client), else 1 */
    uint32_t read_step, write_step;  /* most bytes copied between two publications (0: all) */
};
"""

CDEF = (
    STRUCT
    + """
const char *trio_vchan_native_version(void);
uint32_t vchan_load_acquire_u32(const uint8_t *base, size_t offset);
void vchan_store_release_u32(uint8_t *base, size_t offset, uint32_t value);
uint8_t vchan_load_u8(const uint8_t *base, size_t offset);
void vchan_store_u8(uint8_t *base, size_t offset, uint8_t value);
uint8_t vchan_fetch_or_u8(uint8_t *base, size_t offset, uint8_t bits);
uint8_t vchan_fetch_and_u8(uint8_t *base, size_t offset, uint8_t bits);
void vchan_full_barrier(void);

int64_t vchan_send(struct vchan_end *end, const char *src, size_t length, int whole);
int64_t vchan_receive(struct vchan_end *end, uint8_t *dst, size_t max);
int64_t vchan_peek(struct vchan_end *end);
int vchan_consume(struct vchan_end *end, uint32_t count);
int64_t vchan_space(struct vchan_end *end);
int vchan_commit(struct vchan_end *end, uint32_t count);
int64_t vchan_request_data(struct vchan_end *end);
int64_t vchan_request_space(struct vchan_end *end);

void *vchan_map_pages(int fd, size_t length, int prot, int64_t offset);
int vchan_unmap_pages(void *address, size_t length);
"""
)

#: The body, shared by the shipped module and the checker's stepping build (which defines STEP).
SOURCE_BODY = (
    r"""
#include <stdint.h>
#include <stddef.h>
#include <string.h>

#ifndef STEP
#define STEP(what) ((void)0)
#endif
#define VCHAN_STEP_ACCESS 0     /* about to touch the shared page: a scheduling point */
#define VCHAN_STEP_PUBLISHED 1  /* an index is published; the notify decision is next */
#define VCHAN_STEP_QUIET 2      /* the step ends without an event to send */

#define VCHAN_NOTIFY_WRITE 1
#define VCHAN_NOTIFY_READ 2
"""
    + STRUCT
    + r"""
/* Results of the steps: (count << 9) | (the peer's live byte << 1) | notify, or, when the peer's
   index claims more than a ring's worth in flight (a protocol violation; nothing was touched),
   -1 - that amount. */
#define RESULT(count, live, notify) (((int64_t)(count) << 9) | ((int64_t)(live) << 1) | (notify))

/* Shared indices are naturally aligned (offsets 0..15 of a page-aligned mapping), so the
   __atomic builtins compile to plain aligned moves plus the ordering we ask for. */
uint32_t vchan_load_acquire_u32(const uint8_t *base, size_t offset) {
    STEP(VCHAN_STEP_ACCESS);
    return __atomic_load_n((const uint32_t *)(base + offset), __ATOMIC_ACQUIRE);
}
void vchan_store_release_u32(uint8_t *base, size_t offset, uint32_t value) {
    STEP(VCHAN_STEP_ACCESS);
    __atomic_store_n((uint32_t *)(base + offset), value, __ATOMIC_RELEASE);
}
uint8_t vchan_load_u8(const uint8_t *base, size_t offset) {
    STEP(VCHAN_STEP_ACCESS);
    return __atomic_load_n(base + offset, __ATOMIC_ACQUIRE);
}
void vchan_store_u8(uint8_t *base, size_t offset, uint8_t value) {
    STEP(VCHAN_STEP_ACCESS);
    __atomic_store_n(base + offset, value, __ATOMIC_RELEASE);
    STEP(VCHAN_STEP_PUBLISHED);
}
uint8_t vchan_fetch_or_u8(uint8_t *base, size_t offset, uint8_t bits) {
    STEP(VCHAN_STEP_ACCESS);
    return __atomic_fetch_or(base + offset, bits, __ATOMIC_SEQ_CST);
}
uint8_t vchan_fetch_and_u8(uint8_t *base, size_t offset, uint8_t bits) {
    STEP(VCHAN_STEP_ACCESS);
    return __atomic_fetch_and(base + offset, bits, __ATOMIC_SEQ_CST);
}
void vchan_full_barrier(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

/* The peer's live byte, read before its index: "exited and nothing in the ring" then means
   every byte written before the close was seen. */
static uint8_t peer_live(const struct vchan_end *end) {
    return vchan_load_u8(end->page, end->peer_live);
}

/* Publish one of our indices (release: the data copy before it), then take our own notify bit:
   after a full barrier (the index is visible before we decide), atomically clear it; true if the
   peer had asked to be told. */
static int publish(struct vchan_end *end, uint16_t index, uint32_t value, uint8_t bit) {
    vchan_store_release_u32(end->page, index, value);
    STEP(VCHAN_STEP_PUBLISHED);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    int notify = (vchan_fetch_and_u8(end->page, end->own_notify, (uint8_t)~bit) & bit) != 0;
    if (!notify)
        STEP(VCHAN_STEP_QUIET);
    return notify;
}

/* Bytes in flight on the ring we write, checked; -1 - used if the peer's cons is impossible. */
static int64_t space(struct vchan_end *end) {
    uint32_t used = end->prod - vchan_load_acquire_u32(end->page, end->write_cons);
    if (used > end->write_size)
        return -1 - (int64_t)used;
    return end->write_size - used;
}

/* Bytes waiting in the ring we read, checked; -1 - ready if the peer's prod is impossible. */
static int64_t ready(struct vchan_end *end) {
    uint32_t ready = vchan_load_acquire_u32(end->page, end->read_prod) - end->cons;
    if (ready > end->read_size)
        return -1 - (int64_t)ready;
    return ready;
}

/* The bytes the next step of a copy moves: at most step (0: no limit) of the left ones. */
static size_t next_step(uint32_t step, size_t left) { return step && step < left ? step : left; }

/* Write what fits of src (with whole: all of it or nothing). Nothing is written to a peer whose
   live byte says it is gone (0) or is not a live value; the result carries the byte.
   Large writes go in steps of write_step bytes, prod published after each: a peer that waits
   for data is told after the first step (we return so that the caller notifies it, and the
   caller calls again for the rest), so it copies out while we copy in. With whole, every step
   is written before we return, and the notify decisions are combined. */
int64_t vchan_send(struct vchan_end *end, const char *src, size_t length, int whole) {
    uint8_t live = peer_live(end);
    if (live == 0 || live > end->max_peer_live)
        return RESULT(0, live, 0);
    int64_t room = space(end);
    if (room < 0)
        return room;
    size_t count = (size_t)room < length ? (size_t)room : length;
    if (count == 0 || (whole && count < length))
        return RESULT(0, live, 0);
    size_t done = 0;
    int notify = 0;
    while (done < count && (whole || !notify)) {
        size_t step = next_step(end->write_step, count - done);
        uint32_t start = end->prod & (end->write_size - 1);
        size_t first = end->write_size - start;
        if (first > step)
            first = step;
        memcpy(end->write_ring + start, src + done, first);
        memcpy(end->write_ring, src + done + first, step - first);
        end->prod += (uint32_t)step;
        done += step;
        notify |= publish(end, end->write_prod, end->prod, VCHAN_NOTIFY_WRITE);
    }
    return RESULT(done, live, notify);
}

/* Copy up to max waiting bytes into dst and consume them, in steps of read_step bytes with cons
   published after each: a peer that waits for room is told after the first step (we return
   what we took so far, and the caller notifies it), so that it refills while we copy out. */
int64_t vchan_receive(struct vchan_end *end, uint8_t *dst, size_t max) {
    uint8_t live = peer_live(end);
    int64_t waiting = ready(end);
    if (waiting < 0)
        return waiting;
    size_t count = (size_t)waiting < max ? (size_t)waiting : max;
    size_t done = 0;
    int notify = 0;
    while (done < count && !notify) {
        size_t step = next_step(end->read_step, count - done);
        uint32_t start = end->cons & (end->read_size - 1);
        size_t first = end->read_size - start;
        if (first > step)
            first = step;
        memcpy(dst + done, end->read_ring + start, first);
        memcpy(dst + done + first, end->read_ring, step - first);
        /* Full barrier: finish reading the data before the peer may overwrite it. */
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        end->cons += (uint32_t)step;
        done += step;
        notify = publish(end, end->read_cons, end->cons, VCHAN_NOTIFY_READ);
    }
    return RESULT(done, live, notify);
}

/* The peer's live byte and how much is waiting, for a caller that copies the data itself
   (from read_ring at cons) and then calls vchan_consume. */
int64_t vchan_peek(struct vchan_end *end) {
    uint8_t live = peer_live(end);
    int64_t waiting = ready(end);
    return waiting < 0 ? waiting : RESULT(waiting, live, 0);
}

/* After the caller copied count bytes out (count <= what vchan_peek said): publish, decide. */
int vchan_consume(struct vchan_end *end, uint32_t count) {
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    end->cons += count;
    return publish(end, end->read_cons, end->cons, VCHAN_NOTIFY_READ);
}

/* The peer's live byte and the free space, for a caller that copies into write_ring at prod
   itself and then calls vchan_commit. */
int64_t vchan_space(struct vchan_end *end) {
    uint8_t live = peer_live(end);
    int64_t room = space(end);
    return room < 0 ? room : RESULT(room, live, 0);
}

/* After the caller copied count bytes in (count <= what vchan_space said): publish, decide. */
int vchan_commit(struct vchan_end *end, uint32_t count) {
    end->prod += count;
    return publish(end, end->write_prod, end->prod, VCHAN_NOTIFY_WRITE);
}

/* Ask the peer for an event when it writes (sets WRITE in its notify byte), then look again
   (the seq-cst fetch-or is a full barrier): data that arrived in between would otherwise never be
   announced. Returns what is waiting now, as ready() does. */
int64_t vchan_request_data(struct vchan_end *end) {
    vchan_fetch_or_u8(end->page, end->peer_notify, VCHAN_NOTIFY_WRITE);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return ready(end);
}

/* The same for space: READ in the peer's notify byte, then look at its cons again. */
int64_t vchan_request_space(struct vchan_end *end) {
    vchan_fetch_or_u8(end->page, end->peer_notify, VCHAN_NOTIFY_READ);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return space(end);
}
"""
)

SOURCE = (
    f'#define TRIO_VCHAN_NATIVE_VERSION "{VERSION}"\n'
    + SOURCE_BODY
    + r"""
const char *trio_vchan_native_version(void) { return TRIO_VCHAN_NATIVE_VERSION; }

/* mmap(2) and munmap(2) for trio_vchan._pages: unlike Python's mmap module, a mapping made here
 * keeps no duplicate of the fd (the mapping holds the file; the caller closes its fd). fd -1:
 * anonymous shared memory. NULL (errno set) on failure. */
#include <sys/mman.h>

void *vchan_map_pages(int fd, size_t length, int prot, int64_t offset) {
    int flags = MAP_SHARED | (fd == -1 ? MAP_ANONYMOUS : 0);
    void *address = mmap(NULL, length, prot, flags, fd, (off_t)offset);
    return address == MAP_FAILED ? NULL : address;
}

int vchan_unmap_pages(void *address, size_t length) { return munmap(address, length); }
"""
)

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("trio_vchan._native", SOURCE, extra_compile_args=["-O2"])

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
