/*
 * libxengnttab's mapping calls and the shim's other entry points, driven directly
 * (tests/test_xenshim.py). Linked with Xen's libxengnttab and libxenevtchn, run under the shim.
 *
 *   gnt-map refs|domain|one DOMID:REF...
 *       map the refs, in order, with xengnttab_map_grant_refs (one domain per ref),
 *       xengnttab_map_domain_grant_refs (all as the first ref's domain) or one
 *       xengnttab_map_grant_ref per ref; print "page I CRC" (zlib's CRC-32 of page I, hex);
 *       write I + 1 into the last byte of page I; unmap (xengnttab_unmap or munmap); print
 *       "unmapped"; close the handle. With GNT_MAP_HOLD set, then print "closed" and wait for
 *       the end of stdin before exiting.
 *   gnt-map others
 *       call the rest of the libraries' functions; print "NAME RESULT ERRNO" for each.
 *
 * Exits 0, or 1 after a message on stderr.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <xenevtchn.h>
#include <xengnttab.h>

#define PAGE 4096u

static uint32_t crc32(const unsigned char *data, size_t n)
{
    uint32_t crc = 0xFFFFFFFFu;
    while (n--) {
        crc ^= *data++;
        for (int k = 0; k < 8; k++)
            crc = crc & 1 ? 0xEDB88320u ^ (crc >> 1) : crc >> 1;
    }
    return ~crc;
}

static int fail(const char *what)
{
    fprintf(stderr, "gnt-map: %s: %s\n", what, strerror(errno));
    return 1;
}

static void report(const char *name, long result)
{
    printf("%s %ld %d\n", name, result, result < 0 || result == 0 ? errno : 0);
    errno = 0;
}

static int others(void)
{
    xenevtchn_handle *xce = xenevtchn_open(NULL, 0);
    xengnttab_handle *xgt = xengnttab_open(NULL, 0);
    xengntshr_handle *xgs = xengntshr_open(NULL, 0);
    uint32_t ref = 8, fd = 0;

    if (!xce || !xgt || !xgs)
        return fail("open");
    errno = 0;
    report("xenevtchn_bind_virq", xenevtchn_bind_virq(xce, 1));
    report("xenevtchn_fdopen", xenevtchn_fdopen(NULL, 0, 0) ? 1 : 0);
    report("xengnttab_fd", xengnttab_fd(xgt));
    report("xengntshr_fd", xengntshr_fd(xgs));
    report("xengnttab_grant_copy", xengnttab_grant_copy(xgt, 0, NULL));
    report("xengnttab_dmabuf_exp_from_refs",
           xengnttab_dmabuf_exp_from_refs(xgt, 0, 0, 1, &ref, &fd));
    report("xengnttab_dmabuf_exp_wait_released", xengnttab_dmabuf_exp_wait_released(xgt, 0, 0));
    report("xengnttab_dmabuf_imp_to_refs", xengnttab_dmabuf_imp_to_refs(xgt, 0, 0, 1, &ref));
    report("xengnttab_dmabuf_imp_release", xengnttab_dmabuf_imp_release(xgt, 0));
    report("xengnttab_set_max_grants", xengnttab_set_max_grants(xgt, 128) == 0 ? 1 : -1);
    report("xenevtchn_restrict", xenevtchn_restrict(xce, 5) == 0 ? 1 : -1);
    report("xenevtchn_bind_unbound_port", xenevtchn_bind_unbound_port(xce, 5));
    report("xenevtchn_bind_interdomain", xenevtchn_bind_interdomain(xce, 6, 1));
    report("xenevtchn_restrict", xenevtchn_restrict(xce, 6) == 0 ? 1 : -1);
    xengntshr_close(xgs);
    xengnttab_close(xgt);
    xenevtchn_close(xce);
    return 0;
}

int main(int argc, char **argv)
{
    uint32_t count, domids[64], refs[64];
    unsigned char *pages[64];
    xengnttab_handle *xgt;

    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 2 && !strcmp(argv[1], "others"))
        return others();
    if (argc < 3 || argc - 2 > 64) {
        fprintf(stderr, "usage: gnt-map refs|domain|one DOMID:REF... | gnt-map others\n");
        return 1;
    }
    count = (uint32_t)(argc - 2);
    for (uint32_t i = 0; i < count; i++)
        if (sscanf(argv[2 + i], "%u:%u", &domids[i], &refs[i]) != 2) {
            fprintf(stderr, "gnt-map: not DOMID:REF: %s\n", argv[2 + i]);
            return 1;
        }
    xgt = xengnttab_open(NULL, 0);
    if (!xgt)
        return fail("xengnttab_open");
    if (!strcmp(argv[1], "one")) {
        for (uint32_t i = 0; i < count; i++) {
            pages[i] = xengnttab_map_grant_ref(xgt, domids[i], refs[i], PROT_READ | PROT_WRITE);
            if (!pages[i])
                return fail("xengnttab_map_grant_ref");
        }
    } else {
        unsigned char *region =
            !strcmp(argv[1], "refs")
                ? xengnttab_map_grant_refs(xgt, count, domids, refs, PROT_READ | PROT_WRITE)
                : xengnttab_map_domain_grant_refs(xgt, count, domids[0], refs,
                                                  PROT_READ | PROT_WRITE);
        if (!region)
            return fail(argv[1][0] == 'r' ? "xengnttab_map_grant_refs"
                                           : "xengnttab_map_domain_grant_refs");
        for (uint32_t i = 0; i < count; i++)
            pages[i] = region + (size_t)i * PAGE;
    }
    for (uint32_t i = 0; i < count; i++)
        printf("page %u %08x\n", i, crc32(pages[i], PAGE));
    for (uint32_t i = 0; i < count; i++)
        pages[i][PAGE - 1] = (unsigned char)(i + 1);
    if (!strcmp(argv[1], "one")) {
        for (uint32_t i = 0; i < count; i++)
            if (xengnttab_unmap(xgt, pages[i], 1) < 0)
                return fail("xengnttab_unmap");
    } else if (xengnttab_unmap(xgt, pages[0], count) < 0) {
        return fail("xengnttab_unmap");
    }
    printf("unmapped\n");
    xengnttab_close(xgt);
    if (getenv("GNT_MAP_HOLD")) { /* say so, then live on until stdin closes */
        printf("closed\n");
        fflush(stdout);
        while (getchar() != EOF)
            ;
    }
    return 0;
}
