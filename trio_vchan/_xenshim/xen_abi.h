/*
 * The parts of Xen 4.17's public tool headers that the shim and the libxenctrl stub implement:
 * types and prototypes of <xenevtchn.h>, <xengnttab.h> and <xenctrl.h>, declared here so that
 * the package builds with only a C compiler (no libxen-dev).
 *
 * Checked where libxen-dev is installed: tests/test_xenshim.py compiles xenshim.c and xcstub.c
 * in a unit that includes Xen's own headers first, so that any prototype, typedef or macro here
 * that differs from Xen's is a conflicting redeclaration, a compile error.
 */
#ifndef TRIO_VCHAN_XEN_ABI_H
#define TRIO_VCHAN_XEN_ABI_H

#include <stdint.h>

/* <xen/xen.h>, <xen/event_channel.h> */
typedef uint16_t domid_t;
typedef uint32_t evtchn_port_t;

/* <xentoollog.h>: only ever passed through. */
struct xentoollog_logger;
typedef struct xentoollog_logger xentoollog_logger;

/* ---- <xenevtchn.h> ---- */
typedef int xenevtchn_port_or_error_t;
typedef struct xenevtchn_handle xenevtchn_handle;

#define XENEVTCHN_NO_CLOEXEC (1 << 0)

xenevtchn_handle *xenevtchn_open(struct xentoollog_logger *logger, unsigned int flags);
xenevtchn_handle *xenevtchn_fdopen(struct xentoollog_logger *logger, int fd,
                                   unsigned open_flags);
int xenevtchn_close(xenevtchn_handle *xce);
int xenevtchn_fd(xenevtchn_handle *xce);
int xenevtchn_notify(xenevtchn_handle *xce, evtchn_port_t port);
xenevtchn_port_or_error_t xenevtchn_bind_unbound_port(xenevtchn_handle *xce, uint32_t domid);
xenevtchn_port_or_error_t xenevtchn_bind_interdomain(xenevtchn_handle *xce, uint32_t domid,
                                                     evtchn_port_t remote_port);
xenevtchn_port_or_error_t xenevtchn_bind_virq(xenevtchn_handle *xce, unsigned int virq);
int xenevtchn_unbind(xenevtchn_handle *xce, evtchn_port_t port);
xenevtchn_port_or_error_t xenevtchn_pending(xenevtchn_handle *xce);
int xenevtchn_unmask(xenevtchn_handle *xce, evtchn_port_t port);
int xenevtchn_restrict(xenevtchn_handle *xce, domid_t domid);

/* ---- <xengnttab.h> ---- */
typedef struct xengntdev_handle xengnttab_handle;
typedef struct xengntdev_handle xengntshr_handle;
struct xengnttab_grant_copy_segment; /* only pointed to: grant copies are not implemented */
typedef struct xengnttab_grant_copy_segment xengnttab_grant_copy_segment_t;

xengnttab_handle *xengnttab_open(struct xentoollog_logger *logger, unsigned open_flags);
int xengnttab_close(xengnttab_handle *xgt);
int xengnttab_fd(xengnttab_handle *xgt);
void *xengnttab_map_grant_ref(xengnttab_handle *xgt, uint32_t domid, uint32_t ref, int prot);
void *xengnttab_map_grant_refs(xengnttab_handle *xgt, uint32_t count, uint32_t *domids,
                               uint32_t *refs, int prot);
void *xengnttab_map_domain_grant_refs(xengnttab_handle *xgt, uint32_t count, uint32_t domid,
                                      uint32_t *refs, int prot);
void *xengnttab_map_grant_ref_notify(xengnttab_handle *xgt, uint32_t domid, uint32_t ref,
                                     int prot, uint32_t notify_offset,
                                     evtchn_port_t notify_port);
int xengnttab_unmap(xengnttab_handle *xgt, void *start_address, uint32_t count);
int xengnttab_set_max_grants(xengnttab_handle *xgt, uint32_t nr_grants);
int xengnttab_grant_copy(xengnttab_handle *xgt, uint32_t count,
                         xengnttab_grant_copy_segment_t *segs);
int xengnttab_dmabuf_exp_from_refs(xengnttab_handle *xgt, uint32_t domid, uint32_t flags,
                                   uint32_t count, const uint32_t *refs, uint32_t *fd);
int xengnttab_dmabuf_exp_wait_released(xengnttab_handle *xgt, uint32_t fd,
                                       uint32_t wait_to_ms);
int xengnttab_dmabuf_imp_to_refs(xengnttab_handle *xgt, uint32_t domid, uint32_t fd,
                                 uint32_t count, uint32_t *refs);
int xengnttab_dmabuf_imp_release(xengnttab_handle *xgt, uint32_t fd);

xengntshr_handle *xengntshr_open(struct xentoollog_logger *logger, unsigned open_flags);
int xengntshr_close(xengntshr_handle *xgs);
int xengntshr_fd(xengntshr_handle *xgs);
void *xengntshr_share_pages(xengntshr_handle *xgs, uint32_t domid, int count, uint32_t *refs,
                            int writable);
void *xengntshr_share_page_notify(xengntshr_handle *xgs, uint32_t domid, uint32_t *ref,
                                  int writable, uint32_t notify_offset,
                                  evtchn_port_t notify_port);
int xengntshr_unshare(xengntshr_handle *xgs, void *start_address, uint32_t count);

/* ---- <xenctrl.h>: the three calls of xcstub.c ---- */
typedef struct xc_interface_core xc_interface;
typedef struct xc_dominfo xc_dominfo_t;

xc_interface *xc_interface_open(xentoollog_logger *logger, xentoollog_logger *dombuild_logger,
                                unsigned open_flags);
int xc_interface_close(xc_interface *xch);
int xc_domain_getinfo(xc_interface *xch, uint32_t first_domid, unsigned int max_doms,
                      xc_dominfo_t *info);

#endif
