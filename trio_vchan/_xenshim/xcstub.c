/*
 * The three libxenctrl calls of vchan-socket-proxy's client mode, for the simulated host.
 *
 * Before connecting, `vchan-socket-proxy -m client` opens libxenctrl (the hypervisor's
 * privcmd device) only to ask, when a XenStore watch fires and the vchan is not up yet,
 * whether the server's domain is dying. The simulated host has no such question to answer:
 * xc_domain_getinfo() fails with EPERM, which the proxy treats as "keep waiting".
 * `trio-vchan sim --xen-libs` preloads it with xenshim for every program: it is inert for one
 * that never calls xc_interface_open(), and a program that needs more of libxenctrl cannot run
 * on the simulated host anyway (docs/interop.md).
 */
#include <errno.h>
#include <stdlib.h>

#include "xen_abi.h"

#define EXPORT __attribute__((visibility("default")))

struct xc_interface_core {
    int unused;
};

EXPORT xc_interface *xc_interface_open(xentoollog_logger *logger,
                                       xentoollog_logger *dombuild_logger, unsigned open_flags)
{
    (void)logger;
    (void)dombuild_logger;
    (void)open_flags;
    return calloc(1, sizeof(struct xc_interface_core));
}

EXPORT int xc_interface_close(xc_interface *xch)
{
    free(xch);
    return 0;
}

EXPORT int xc_domain_getinfo(xc_interface *xch, uint32_t first_domid, unsigned int max_doms,
                             xc_dominfo_t *info)
{
    (void)xch;
    (void)first_domid;
    (void)max_doms;
    (void)info;
    errno = EPERM;
    return -1;
}
