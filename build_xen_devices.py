"""cffi builder for ``trio_vchan._xen_devices``: the ioctl ABI of Linux's Xen devices.

The ioctl request numbers and the request structs of ``/dev/xen/evtchn``, ``/dev/xen/gntalloc``
and ``/dev/xen/gntdev`` come from the kernel's uapi headers (Debian: ``linux-libc-dev``), compiled
here, so no number or offset is ever copied by hand. Every struct is declared with ``...;``: the C
compiler, not this file, decides field offsets and sizes, and cffi checks that each named field
exists. The variable-length tails (``gref_ids``, ``refs``) are declared as flexible arrays so that
Python can index past the header's placeholder ``[1]``.
"""

from __future__ import annotations

from cffi import FFI

CDEF = """
#define IOCTL_EVTCHN_BIND_INTERDOMAIN ...
#define IOCTL_EVTCHN_BIND_UNBOUND_PORT ...
#define IOCTL_EVTCHN_UNBIND ...
#define IOCTL_EVTCHN_NOTIFY ...
#define IOCTL_EVTCHN_RESET ...

struct ioctl_evtchn_bind_interdomain { unsigned int remote_domain; unsigned int remote_port; ...; };
struct ioctl_evtchn_bind_unbound_port { unsigned int remote_domain; ...; };
struct ioctl_evtchn_unbind { unsigned int port; ...; };
struct ioctl_evtchn_notify { unsigned int port; ...; };

#define IOCTL_GNTALLOC_ALLOC_GREF ...
#define IOCTL_GNTALLOC_DEALLOC_GREF ...
#define IOCTL_GNTALLOC_SET_UNMAP_NOTIFY ...
#define GNTALLOC_FLAG_WRITABLE ...

struct ioctl_gntalloc_alloc_gref {
    uint16_t domid; uint16_t flags; uint32_t count; uint64_t index; uint32_t gref_ids[]; ...;
};
struct ioctl_gntalloc_dealloc_gref { uint64_t index; uint32_t count; ...; };
struct ioctl_gntalloc_unmap_notify {
    uint64_t index; uint32_t action; uint32_t event_channel_port; ...;
};

#define IOCTL_GNTDEV_MAP_GRANT_REF ...
#define IOCTL_GNTDEV_UNMAP_GRANT_REF ...
#define IOCTL_GNTDEV_SET_UNMAP_NOTIFY ...

struct ioctl_gntdev_grant_ref { uint32_t domid; uint32_t ref; ...; };
struct ioctl_gntdev_map_grant_ref {
    uint32_t count; uint64_t index; struct ioctl_gntdev_grant_ref refs[]; ...;
};
struct ioctl_gntdev_unmap_grant_ref { uint64_t index; uint32_t count; ...; };
struct ioctl_gntdev_unmap_notify {
    uint64_t index; uint32_t action; uint32_t event_channel_port; ...;
};

/* gntalloc.h and gntdev.h both define these, with the same values. */
#define UNMAP_NOTIFY_CLEAR_BYTE ...
#define UNMAP_NOTIFY_SEND_EVENT ...
"""

# <xen/evtchn.h> uses domid_t and <xen/gntdev.h> grant_ref_t without defining them: in the kernel
# they come from Xen's interface headers, which userspace does not get from linux-libc-dev.
SOURCE = r"""
#include <stdint.h>
#include <sys/ioctl.h>
typedef uint16_t domid_t;
typedef uint32_t grant_ref_t;
#include <xen/evtchn.h>
#include <xen/gntalloc.h>
#include <xen/gntdev.h>
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("trio_vchan._xen_devices", SOURCE)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
