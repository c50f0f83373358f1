/*
 * libxenevtchn and libxengnttab/libxengntshr for trio-vchan's simulated Xen host.
 *
 * Theory of operation
 * -------------------
 * On Linux, libxenevtchn and libxengnttab/libxengntshr open /dev/xen/evtchn, gntdev and
 * gntalloc. This library defines every function that Xen 4.17's libxenevtchn.so.1 and
 * libxengnttab.so.1 export (`nm -D`): those a vchan program calls (all that Xen's C
 * libxenvchan and ocaml-vchan's grant library use) over the simulated host's platform protocol
 * (docs/sim-protocol.md): SOCK_SEQPACKET requests and replies on
 * $TRIO_VCHAN_SIM/domains/$TRIO_VCHAN_DOMID/platform, with eventfds and memfds coming back as
 * SCM_RIGHTS; the others (virqs, grant copies, dma-bufs, ...) fail with ENOSYS and say so on
 * stderr, rather than reaching the real library, which would fail without /dev/xen. It is
 * loaded with LD_PRELOAD (docs/interop.md says why), so it also interposes munmap():
 * libxenvchan_close() releases the external ring pages with a plain munmap(), which on Linux
 * is what ends a gntalloc share or a gntdev mapping.
 *
 * The whole process shares one platform connection, opened by the first xen*_open() and kept
 * (idle, holding nothing) after the last xen*_close(), as the next open would only make it
 * again: libxenvchan opens and closes its handles once per connection, and a new platform
 * connection costs the host more than the requests on it; one the host dropped meanwhile is
 * made again. Releases and closes are sent without waiting for their replies (see post()),
 * which are read with the next request's. A child of fork() makes its own unless it
 * inherited live handles. When the process dies the host sees that one connection close and
 * releases, in order, every share and mapping (performing the unmap-notifies:
 * clear the live byte, fire the peer) and then every port. Separate connections for the
 * event-channel and grant handles would let the host close the port first, and the peer
 * would wake before its live byte dropped (Linux avoids that by reference-counting the port
 * an unmap-notify uses).
 *
 * Event channels: every port's wait eventfd is in the handle's epoll set (the fd that
 * xenevtchn_fd() returns, pollable like /dev/xen/evtchn) with EPOLLONESHOT. pending() takes
 * one ready port, consumes its eventfd and leaves it disarmed (masked); unmask() re-arms it,
 * so an event that came in meanwhile is reported again, as Linux's evtchn device does.
 *
 * Grants: a share is a memfd mapped MAP_SHARED; a mapping is the memfd the host returns,
 * mapped at the offset it names. GNT_MAP takes one domain per request, so refs of several
 * domains (xengnttab_map_grant_refs) are mapped page by page into one reserved range. Each region (address, length, host handles) is remembered
 * until xengntshr_unshare(), xengnttab_unmap(), munmap() or the owner's close releases it.
 *
 * With TRIO_VCHAN_SIM and TRIO_VCHAN_DOMID set, a constructor introduces the domain if the
 * host does not have it yet and sets XENSTORED_PATH (if unset) to the domain's XenStore
 * socket, so that an unmodified libxenstore reaches the simulated XenStore.
 */
#define _GNU_SOURCE
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "xen_abi.h"

#define EXPORT __attribute__((visibility("default")))

#define PAGE 4096u
#define VERSION 1u
#define MAX_PAGES 1024u
#define HEADER_WORDS 4u
#define MESSAGE_MAX (4u * (HEADER_WORDS + MAX_PAGES))
#define NO_NOTIFY ((uint32_t)-1)

enum op {
    OP_HELLO = 1,
    OP_EVTCHN_BIND_UNBOUND = 2,
    OP_EVTCHN_BIND_INTERDOMAIN = 3,
    OP_EVTCHN_CLOSE = 4,
    OP_GNT_SHARE = 6,
    OP_GNT_MAP = 7,
    OP_GNT_SET_UNMAP_NOTIFY = 8,
    OP_GNT_RELEASE = 9,
    OP_INTRODUCE_DOMAIN = 10,
};
#define MAP_WRITABLE 1u

/* One request and its reply. `words` go out with the request (GNT_MAP's refs) and come back
 * with the reply (GNT_SHARE's refs): at most MAX_PAGES each way. */
struct call {
    uint32_t op, arg[3];
    const uint32_t *words;
    uint32_t nwords;
    uint32_t val[3];       /* reply values */
    uint32_t *out;         /* room for reply words, or NULL */
    uint32_t out_max, nout;
    int fds[2];            /* received fds (-1 if none) */
    int nfds;              /* how many fds the reply must carry */
    int quiet;             /* an error status the caller handles itself: not reported */
    int quiet_hangup;      /* the host hanging up is no news: not reported */
};

/* ---- the process's platform connection --------------------------------------------------- */

static pthread_mutex_t lock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
static int conn = -1;
static unsigned conn_users;

static void complain(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void complain(const char *fmt, ...)
{
    va_list ap;
    int saved = errno;
    fputs("trio-vchan xenshim: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    errno = saved;
}

/* A call the simulated host has nothing for: say so, and fail as an unknown ioctl would. */
static void unsupported(const char *call)
{
    complain("%s is not implemented on the simulated host", call);
    errno = ENOSYS;
}

static void close_fds(int *fds, int n)
{
    for (int i = 0; i < n; i++)
        if (fds[i] >= 0) {
            close(fds[i]);
            fds[i] = -1;
        }
}

static uint32_t buf[HEADER_WORDS + MAX_PAGES]; /* one message, either way; under `lock` */

/* Send `c`'s request on `fd`; 0, or -1 with errno. */
static int send_request(int fd, const char *what, struct call *c)
{
    ssize_t n;

    if (c->nwords > MAX_PAGES) {
        errno = EINVAL;
        return -1;
    }
    buf[0] = htole32(c->op);
    for (int i = 0; i < 3; i++)
        buf[1 + i] = htole32(c->arg[i]);
    for (uint32_t i = 0; i < c->nwords; i++)
        buf[HEADER_WORDS + i] = htole32(c->words[i]);
    n = send(fd, buf, 4 * (HEADER_WORDS + c->nwords), MSG_NOSIGNAL);
    if (n < 0) {
        complain("%s: cannot reach the simulated host: %s", what, strerror(errno));
        return -1;
    }
    return 0;
}

/* Receive the reply to `c` on `fd`; 0, or -1 with errno (the host's errno for an error
 * reply). */
static int receive_reply(int fd, const char *what, struct call *c)
{
    union {
        char space[CMSG_SPACE(2 * sizeof(int))];
        struct cmsghdr align;
    } control;
    struct iovec iov;
    struct msghdr msg;
    struct cmsghdr *cmsg;
    ssize_t n;
    uint32_t status;

    c->fds[0] = c->fds[1] = -1;
    c->nout = 0;
    memset(&msg, 0, sizeof msg);
    iov.iov_base = buf;
    iov.iov_len = MESSAGE_MAX;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.space;
    msg.msg_controllen = sizeof control.space;
    do
        n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        complain("%s: no reply from the simulated host: %s", what, strerror(errno));
        return -1;
    }
    int got = 0;
    for (cmsg = CMSG_FIRSTHDR(&msg); cmsg; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
        if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS)
            continue;
        size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; i++) {
            int received;
            memcpy(&received, CMSG_DATA(cmsg) + i * sizeof(int), sizeof received);
            if (got < 2)
                c->fds[got++] = received;
            else
                close(received);
        }
    }
    if (n == 0) {
        close_fds(c->fds, 2);
        if (!c->quiet_hangup)
            complain("%s: the simulated host hung up (has it stopped?)", what);
        errno = EPIPE;
        return -1;
    }
    /* An error reply's message is text of any length; only a success is whole words. */
    status = n >= (ssize_t)(4 * HEADER_WORDS) ? le32toh(buf[0]) : 0;
    if (n < (ssize_t)(4 * HEADER_WORDS) || (!status && n % 4) ||
        (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
        close_fds(c->fds, 2);
        complain("%s: the simulated host sent a malformed reply", what);
        errno = EPROTO;
        return -1;
    }
    if (status) {
        close_fds(c->fds, 2);
        if (status != (uint32_t)c->quiet)
            complain("%s: %.*s", what, (int)(n - 4 * HEADER_WORDS), (char *)&buf[HEADER_WORDS]);
        errno = (int)status;
        return -1;
    }
    for (int i = 0; i < 3; i++)
        c->val[i] = le32toh(buf[1 + i]);
    c->nout = (uint32_t)(n / 4 - HEADER_WORDS);
    if (got != c->nfds || (c->nout && (!c->out || c->nout > c->out_max))) {
        close_fds(c->fds, 2);
        complain("%s: the simulated host sent %d fds and %u words, not %d fds", what, got,
                 c->nout, c->nfds);
        errno = EPROTO;
        return -1;
    }
    for (uint32_t i = 0; i < c->nout; i++)
        c->out[i] = le32toh(buf[HEADER_WORDS + i]);
    return 0;
}

/* Requests sent by post() whose replies are still to be read, and what each did; under
 * `lock`. Their replies come back in order, before the reply to any later request. */
#define POSTED_MAX 64
static const char *posted[POSTED_MAX];
static unsigned nposted;

/* Read the replies to every posted request, reporting any error (nobody waits for them). */
static void settle(int fd)
{
    for (unsigned i = 0; i < nposted; i++) {
        struct call c = {.quiet_hangup = 1};
        if (receive_reply(fd, posted[i], &c) < 0 && errno == EPIPE)
            break; /* the host hung up: it answers nothing more */
    }
    nposted = 0;
}

/* Make one request on `fd` and wait for its reply; 0, or -1 with errno. */
static int transact(int fd, const char *what, struct call *c)
{
    if (send_request(fd, what, c) < 0)
        return -1;
    if (fd == conn)
        settle(fd); /* a new connection (hello, introduce) has posted nothing */
    return receive_reply(fd, what, c);
}

static int request(const char *what, struct call *c)
{
    int rc;
    pthread_mutex_lock(&lock);
    if (conn < 0) {
        errno = EBADF;
        rc = -1;
    } else {
        rc = transact(conn, what, c);
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

/* Make a request whose result nobody can act on (a release or a close: on Linux an munmap or
 * an unbind that cannot fail for what the process holds) without waiting for its reply: the
 * host answers the requests of one connection in order, so every later request still finds
 * it done, and the reply is read (and an error reported) before the next request's reply, or
 * when the process's last handle closes. */
static void post(const char *what, struct call *c)
{
    pthread_mutex_lock(&lock);
    if (conn >= 0) {
        if (nposted == POSTED_MAX)
            settle(conn);
        if (send_request(conn, what, c) == 0)
            posted[nposted++] = what;
    }
    pthread_mutex_unlock(&lock);
}

static int connect_socket(const char *dir, const char *name)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    int fd;

    if ((size_t)snprintf(addr.sun_path, sizeof addr.sun_path, "%s/%s", dir, name) >=
        sizeof addr.sun_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

/* $TRIO_VCHAN_SIM and the decimal domid of $TRIO_VCHAN_DOMID; NULL with errno if unusable. */
static const char *host_dir(uint32_t *domid)
{
    const char *dir = getenv("TRIO_VCHAN_SIM");
    const char *text = getenv("TRIO_VCHAN_DOMID");
    char *end;
    unsigned long value;

    if (!dir || !*dir || !text || !*text) {
        complain("set TRIO_VCHAN_SIM (a simulated host's directory) and TRIO_VCHAN_DOMID");
        errno = ENOENT;
        return NULL;
    }
    errno = 0;
    value = strtoul(text, &end, 10);
    if (errno || *end || value > 32751 || (text[0] == '0' && text[1]) || text[0] == '-' ||
        text[0] == '+') {
        complain("TRIO_VCHAN_DOMID must be a decimal domain id, not \"%s\"", text);
        errno = EINVAL;
        return NULL;
    }
    *domid = (uint32_t)value;
    return dir;
}

/* Introduce our domain through <dir>/host unless its platform socket exists already. */
static int ensure_domain(const char *dir, uint32_t domid)
{
    char path[4096];
    struct stat st;
    struct call c = {.op = OP_INTRODUCE_DOMAIN, .arg = {domid, 0, 0}};
    int fd, rc;

    snprintf(path, sizeof path, "%s/domains/%u/platform", dir, domid);
    if (stat(path, &st) == 0)
        return 0;
    fd = connect_socket(dir, "host");
    if (fd < 0) {
        complain("%s is not a running simulated host: %s", dir, strerror(errno));
        return -1;
    }
    pthread_mutex_lock(&lock);
    rc = transact(fd, "introduce our domain", &c);
    pthread_mutex_unlock(&lock);
    close(fd);
    return rc;
}

/* Whether the host hung up our idle connection: it sends nothing unasked, so anything but
 * "nothing to read yet" means it is gone. */
static int idle_connection_gone(void)
{
    char byte;
    ssize_t n = recv(conn, &byte, 1, MSG_PEEK | MSG_DONTWAIT);

    return n >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK);
}

static int open_connection(void)
{
    char name[64];
    uint32_t domid;
    const char *dir;
    int fd, rc = 0;

    pthread_mutex_lock(&lock);
    if (conn >= 0 && conn_users == 0)
        settle(conn); /* normally done already, by the last close */
    if (conn >= 0 && conn_users == 0 && idle_connection_gone()) {
        close(conn); /* the host hung up meanwhile (stopped, or destroyed our domain) */
        conn = -1;
    }
    if (conn >= 0) {
        conn_users++;
        goto out;
    }
    rc = -1;
    dir = host_dir(&domid);
    if (!dir || ensure_domain(dir, domid) < 0)
        goto out;
    snprintf(name, sizeof name, "domains/%u/platform", domid);
    fd = connect_socket(dir, name);
    if (fd < 0) {
        complain("cannot join the simulated host at %s as domain %u: %s", dir, domid,
                 strerror(errno));
        goto out;
    }
    struct call hello = {.op = OP_HELLO, .arg = {VERSION, 0, 0}};
    if (transact(fd, "hello", &hello) < 0) {
        close(fd);
        goto out;
    }
    if (hello.val[0] != VERSION || hello.val[1] != domid || hello.val[2] != PAGE) {
        complain("the host speaks version %u as domain %u with %u-byte pages, not version %u "
                 "as domain %u with %u-byte pages",
                 hello.val[0], hello.val[1], hello.val[2], VERSION, domid, PAGE);
        close(fd);
        errno = EPROTO;
        goto out;
    }
    conn = fd;
    conn_users = 1;
    rc = 0;
out:
    pthread_mutex_unlock(&lock);
    return rc;
}

static void release_connection(void)
{
    pthread_mutex_lock(&lock);
    if (conn_users)
        conn_users--; /* the connection stays for the next open (see the top of the file) */
    if (!conn_users && conn >= 0)
        settle(conn); /* when the last close returns, the host has done everything asked */
    pthread_mutex_unlock(&lock);
}

/* Before fork(): read the posted requests' replies, or parent and child could each read the
 * other's. */
static void settle_before_fork(void)
{
    pthread_mutex_lock(&lock);
    if (conn >= 0)
        settle(conn);
    pthread_mutex_unlock(&lock);
}

/* In a child of fork(): an idle connection is the parent's, whose replies would come to
 * either process; drop our copy, and the next open makes the child its own. */
static void forget_idle_connection(void)
{
    if (conn >= 0 && conn_users == 0) {
        close(conn);
        conn = -1;
    }
}

__attribute__((constructor)) static void join_host(void)
{
    char path[4096];
    uint32_t domid;
    const char *dir;

    pthread_atfork(settle_before_fork, NULL, forget_idle_connection);

    if (!getenv("TRIO_VCHAN_SIM"))
        return; /* nothing to do before the first call; that call reports the problem */
    dir = host_dir(&domid);
    if (!dir || ensure_domain(dir, domid) < 0)
        return;
    if (!getenv("XENSTORED_PATH")) {
        snprintf(path, sizeof path, "%s/domains/%u/xenstore", dir, domid);
        setenv("XENSTORED_PATH", path, 0);
    }
}

/* ---- event channels ---------------------------------------------------------------------- */

struct port {
    struct port *next;
    evtchn_port_t number;
    int wait_fd;   /* readable while events are pending (what the peer's notifies increment) */
    int notify_fd; /* the peer's eventfd */
};

#define UNRESTRICTED ((uint32_t)-1)

struct xenevtchn_handle {
    int epfd;
    struct port *ports;
    uint32_t restricted; /* xenevtchn_restrict's domain, or UNRESTRICTED */
};

static struct port *find_port(xenevtchn_handle *xce, evtchn_port_t number)
{
    for (struct port *p = xce->ports; p; p = p->next)
        if (p->number == number)
            return p;
    return NULL;
}

static int arm(xenevtchn_handle *xce, struct port *p, int how)
{
    struct epoll_event ev = {.events = EPOLLIN | EPOLLONESHOT, .data.u32 = p->number};
    return epoll_ctl(xce->epfd, how, p->wait_fd, &ev);
}

EXPORT xenevtchn_handle *xenevtchn_open(struct xentoollog_logger *logger, unsigned open_flags)
{
    xenevtchn_handle *xce;
    (void)logger;

    xce = calloc(1, sizeof *xce);
    if (!xce)
        return NULL;
    xce->restricted = UNRESTRICTED;
    xce->epfd = epoll_create1(open_flags & XENEVTCHN_NO_CLOEXEC ? 0 : EPOLL_CLOEXEC);
    if (xce->epfd < 0) {
        free(xce);
        return NULL;
    }
    if (open_connection() < 0) {
        int saved = errno;
        close(xce->epfd);
        free(xce);
        errno = saved;
        return NULL;
    }
    return xce;
}

static void drop_port(xenevtchn_handle *xce, struct port *p)
{
    struct call c = {.op = OP_EVTCHN_CLOSE, .arg = {p->number, 0, 0}};
    struct port **link;

    for (link = &xce->ports; *link != p; link = &(*link)->next)
        ;
    *link = p->next;
    epoll_ctl(xce->epfd, EPOLL_CTL_DEL, p->wait_fd, NULL);
    post("close an event channel", &c); /* the host fires the other end */
    close(p->wait_fd);
    close(p->notify_fd);
    free(p);
}

EXPORT int xenevtchn_close(xenevtchn_handle *xce)
{
    if (!xce)
        return 0;
    while (xce->ports)
        drop_port(xce, xce->ports);
    close(xce->epfd);
    free(xce);
    release_connection();
    return 0;
}

EXPORT int xenevtchn_fd(xenevtchn_handle *xce)
{
    return xce->epfd;
}

EXPORT int xenevtchn_notify(xenevtchn_handle *xce, evtchn_port_t port)
{
    static const uint64_t one = 1;
    struct port *p = find_port(xce, port);

    if (!p) {
        errno = ENOTCONN; /* Linux's evtchn device, for a port this fd did not bind */
        return -1;
    }
    /* EAGAIN: the counter is saturated, so an event is pending anyway. */
    if (write(p->notify_fd, &one, sizeof one) < 0 && errno != EAGAIN)
        return -1;
    return 0;
}

static xenevtchn_port_or_error_t bind_port(xenevtchn_handle *xce, struct call *c, const char *what)
{
    struct port *p = malloc(sizeof *p);

    if (!p)
        return -1;
    c->nfds = 2;
    if (request(what, c) < 0) {
        free(p);
        return -1;
    }
    p->number = c->val[0];
    p->wait_fd = c->fds[0];
    p->notify_fd = c->fds[1];
    p->next = xce->ports;
    if (arm(xce, p, EPOLL_CTL_ADD) < 0) {
        int saved = errno;
        struct call close_it = {.op = OP_EVTCHN_CLOSE, .arg = {p->number, 0, 0}};
        request("close an event channel", &close_it);
        close_fds(c->fds, 2);
        free(p);
        errno = saved;
        return -1;
    }
    xce->ports = p;
    return (xenevtchn_port_or_error_t)p->number;
}

/* A restricted handle binds only interdomain ports to its domain (Linux's evtchn device). */
EXPORT xenevtchn_port_or_error_t xenevtchn_bind_unbound_port(xenevtchn_handle *xce,
                                                             uint32_t domid)
{
    struct call c = {.op = OP_EVTCHN_BIND_UNBOUND, .arg = {domid, 0, 0}};

    if (xce->restricted != UNRESTRICTED) {
        errno = EACCES;
        return -1;
    }
    return bind_port(xce, &c, "bind an unbound port");
}

EXPORT xenevtchn_port_or_error_t xenevtchn_bind_interdomain(xenevtchn_handle *xce,
                                                            uint32_t domid,
                                                            evtchn_port_t remote_port)
{
    struct call c = {.op = OP_EVTCHN_BIND_INTERDOMAIN, .arg = {domid, remote_port, 0}};

    if (xce->restricted != UNRESTRICTED && xce->restricted != domid) {
        errno = EACCES;
        return -1;
    }
    return bind_port(xce, &c, "bind an interdomain port");
}

EXPORT int xenevtchn_restrict(xenevtchn_handle *xce, domid_t domid)
{
    if (xce->restricted != UNRESTRICTED) {
        errno = EACCES; /* once only, as Linux */
        return -1;
    }
    if (domid == 0 || domid > 32751) {
        errno = EINVAL;
        return -1;
    }
    xce->restricted = domid;
    return 0;
}

/* The simulated host has no virtual IRQs, and no evtchn device whose fd could be adopted. */
EXPORT xenevtchn_port_or_error_t xenevtchn_bind_virq(xenevtchn_handle *xce, unsigned int virq)
{
    (void)xce;
    (void)virq;
    unsupported("xenevtchn_bind_virq");
    return -1;
}

EXPORT xenevtchn_handle *xenevtchn_fdopen(struct xentoollog_logger *logger, int fd,
                                          unsigned open_flags)
{
    (void)logger;
    (void)fd;
    (void)open_flags;
    unsupported("xenevtchn_fdopen (open a handle with xenevtchn_open)");
    return NULL;
}

EXPORT int xenevtchn_unbind(xenevtchn_handle *xce, evtchn_port_t port)
{
    struct port *p = find_port(xce, port);

    if (!p) {
        errno = ENOTCONN;
        return -1;
    }
    drop_port(xce, p);
    return 0;
}

EXPORT xenevtchn_port_or_error_t xenevtchn_pending(xenevtchn_handle *xce)
{
    struct epoll_event ev;
    uint64_t count;
    int flags = fcntl(xce->epfd, F_GETFL);
    /* Like read() on /dev/xen/evtchn: block, unless the fd was made non-blocking. */
    int timeout = flags >= 0 && (flags & O_NONBLOCK) ? 0 : -1;

    for (;;) {
        int n = epoll_wait(xce->epfd, &ev, 1, timeout);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0) {
            errno = EAGAIN;
            return -1;
        }
        struct port *p = find_port(xce, ev.data.u32);
        if (!p)
            continue; /* unbound meanwhile */
        /* Consume now; EPOLLONESHOT keeps the port masked until xenevtchn_unmask. */
        if (read(p->wait_fd, &count, sizeof count) < 0 && errno != EAGAIN)
            return -1;
        return (xenevtchn_port_or_error_t)p->number;
    }
}

EXPORT int xenevtchn_unmask(xenevtchn_handle *xce, evtchn_port_t port)
{
    struct port *p = find_port(xce, port);

    if (!p)
        return 0; /* Linux's evtchn device ignores ports it does not hold */
    return arm(xce, p, EPOLL_CTL_MOD);
}

/* ---- grants ------------------------------------------------------------------------------ */

struct xengntdev_handle {
    int kind; /* only its address matters: it owns regions */
};

struct region {
    struct region *next;
    struct xengntdev_handle *owner;
    char *addr;
    size_t length;
    uint32_t nhandles;
    uint32_t handles[]; /* one per GNT_SHARE/GNT_MAP that made the region */
};

static struct region *regions; /* under `lock` */

static struct xengntdev_handle *open_gntdev(void)
{
    struct xengntdev_handle *h = calloc(1, sizeof *h);

    if (!h)
        return NULL;
    if (open_connection() < 0) {
        int saved = errno;
        free(h);
        errno = saved;
        return NULL;
    }
    return h;
}

static void release_handles(const uint32_t *handles, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        struct call c = {.op = OP_GNT_RELEASE, .arg = {handles[i], 0, 0}};
        post("release pages", &c);
    }
}

static int real_munmap(void *addr, size_t length)
{
    return (int)syscall(SYS_munmap, addr, length);
}

static struct region *new_region(struct xengntdev_handle *owner, size_t length, uint32_t n)
{
    struct region *r = calloc(1, sizeof *r + n * sizeof r->handles[0]);

    if (r) {
        r->owner = owner;
        r->length = length;
    }
    return r;
}

static void add_region(struct region *r)
{
    pthread_mutex_lock(&lock);
    r->next = regions;
    regions = r;
    pthread_mutex_unlock(&lock);
}

/* Unlink and return the region at exactly [addr, addr + length), or NULL. */
static struct region *take_region(void *addr, size_t length)
{
    struct region **link, *r = NULL;

    pthread_mutex_lock(&lock);
    for (link = &regions; *link; link = &(*link)->next)
        if ((*link)->addr == addr && (*link)->length == length) {
            r = *link;
            *link = r->next;
            break;
        }
    pthread_mutex_unlock(&lock);
    return r;
}

/* Unmap a region, then end its shares or mappings (which performs any unmap-notify). */
static int destroy_region(struct region *r)
{
    int rc = real_munmap(r->addr, r->length);
    int saved = errno;
    release_handles(r->handles, r->nhandles);
    free(r);
    errno = saved;
    return rc;
}

static int unmap_pages(void *addr, uint32_t count)
{
    struct region *r = take_region(addr, (size_t)count * PAGE);

    if (!r)
        return real_munmap(addr, (size_t)count * PAGE);
    return destroy_region(r);
}

/* Closing a handle ends what it still holds at the host; the process's mmaps stay valid. */
static int close_gntdev(struct xengntdev_handle *h)
{
    struct region **link, *r;

    if (!h)
        return 0;
    pthread_mutex_lock(&lock);
    for (link = &regions; (r = *link);) {
        if (r->owner == h) {
            *link = r->next;
            release_handles(r->handles, r->nhandles);
            free(r);
        } else {
            link = &r->next;
        }
    }
    pthread_mutex_unlock(&lock);
    free(h);
    release_connection();
    return 0;
}

static int set_unmap_notify(struct region *r, uint32_t offset, evtchn_port_t port)
{
    /* -1 for either means "none", as for the host. */
    struct call c = {.op = OP_GNT_SET_UNMAP_NOTIFY, .arg = {r->handles[0], offset, port}};

    if (offset == NO_NOTIFY && port == NO_NOTIFY)
        return 0;
    return request("set an unmap-notify", &c);
}

/* The interposed munmap: unmapping a whole shared or mapped region also releases it. */
EXPORT int munmap(void *addr, size_t length)
{
    struct region *r = take_region(addr, length);

    if (!r)
        return real_munmap(addr, length);
    return destroy_region(r);
}

EXPORT xengnttab_handle *xengnttab_open(struct xentoollog_logger *logger, unsigned open_flags)
{
    (void)logger;
    (void)open_flags;
    return open_gntdev();
}

EXPORT int xengnttab_close(xengnttab_handle *xgt)
{
    return close_gntdev(xgt);
}

/* Map `count` refs, ref i of domain domids[same ? 0 : i], into one region. */
static struct region *map_refs(xengnttab_handle *xgt, uint32_t count, const uint32_t *domids,
                               int same, const uint32_t *refs, int prot)
{
    uint32_t flags = prot & PROT_WRITE ? MAP_WRITABLE : 0;
    struct region *r;
    void *addr;

    if (count < 1 || count > MAX_PAGES) {
        errno = EINVAL;
        return NULL;
    }
    for (uint32_t i = 1; !same && i < count; i++)
        if (domids[i] != domids[0])
            goto page_by_page;
    same = 1;
    r = new_region(xgt, (size_t)count * PAGE, count);
    if (!r)
        return NULL;
    /* EINVAL (not consecutive pages of one share) is handled below: map page by page. */
    struct call c = {.op = OP_GNT_MAP, .arg = {domids[0], flags, 0}, .words = refs,
                     .nwords = count, .nfds = 1, .quiet = count > 1 ? EINVAL : 0};
    if (request("map grant refs", &c) == 0) {
        /* One mapping of consecutive pages of one share: the usual case. */
        r->handles[r->nhandles++] = c.val[0];
        addr = mmap(NULL, c.val[2], prot, MAP_SHARED, c.fds[0], c.val[1]);
        close(c.fds[0]);
        if (addr == MAP_FAILED)
            goto fail;
        if (c.val[2] != r->length) {
            real_munmap(addr, c.val[2]);
            errno = EPROTO;
            goto fail;
        }
        r->addr = addr;
        return r;
    }
    if (errno != EINVAL || count == 1)
        goto fail;
    free(r);
page_by_page:
    /* Not consecutive pages of one share, or of several domains (GNT_MAP takes one domain per
       request): map them one by one into a reserved range. */
    r = new_region(xgt, (size_t)count * PAGE, count);
    if (!r)
        return NULL;
    addr = mmap(NULL, r->length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (addr == MAP_FAILED)
        goto fail;
    r->addr = addr;
    for (uint32_t i = 0; i < count; i++) {
        struct call one = {.op = OP_GNT_MAP, .arg = {domids[same ? 0 : i], flags, 0},
                           .words = &refs[i], .nwords = 1, .nfds = 1};
        void *page;
        if (request("map a grant ref", &one) < 0)
            goto fail;
        r->handles[r->nhandles++] = one.val[0];
        page = mmap(r->addr + (size_t)i * PAGE, PAGE, prot, MAP_SHARED | MAP_FIXED, one.fds[0],
                    one.val[1]);
        close(one.fds[0]);
        if (page == MAP_FAILED)
            goto fail;
    }
    return r;
fail:;
    int saved = errno;
    if (r->addr)
        real_munmap(r->addr, r->length);
    release_handles(r->handles, r->nhandles);
    free(r);
    errno = saved;
    return NULL;
}

static void *map_region(xengnttab_handle *xgt, uint32_t count, const uint32_t *domids, int same,
                        const uint32_t *refs, int prot)
{
    struct region *r = map_refs(xgt, count, domids, same, refs, prot);

    if (!r)
        return NULL;
    add_region(r);
    return r->addr;
}

EXPORT void *xengnttab_map_grant_refs(xengnttab_handle *xgt, uint32_t count, uint32_t *domids,
                                      uint32_t *refs, int prot)
{
    return map_region(xgt, count, domids, 0, refs, prot);
}

EXPORT void *xengnttab_map_domain_grant_refs(xengnttab_handle *xgt, uint32_t count,
                                             uint32_t domid, uint32_t *refs, int prot)
{
    return map_region(xgt, count, &domid, 1, refs, prot);
}

EXPORT void *xengnttab_map_grant_ref(xengnttab_handle *xgt, uint32_t domid, uint32_t ref,
                                     int prot)
{
    return map_region(xgt, 1, &domid, 1, &ref, prot);
}

EXPORT void *xengnttab_map_grant_ref_notify(xengnttab_handle *xgt, uint32_t domid, uint32_t ref,
                                            int prot, uint32_t notify_offset,
                                            evtchn_port_t notify_port)
{
    struct region *r = map_refs(xgt, 1, &domid, 1, &ref, prot);

    if (!r)
        return NULL;
    if (set_unmap_notify(r, notify_offset, notify_port) < 0) {
        destroy_region(r);
        return NULL;
    }
    add_region(r);
    return r->addr;
}

/* Linux's gntdev has no per-handle limit any more (libxengnttab takes its ENOTTY as success);
   the host's limits are per domain. */
EXPORT int xengnttab_set_max_grants(xengnttab_handle *xgt, uint32_t nr_grants)
{
    (void)xgt;
    (void)nr_grants;
    return 0;
}

/* No device fd: a handle here is the process's one platform connection, not to be handed out. */
EXPORT int xengnttab_fd(xengnttab_handle *xgt)
{
    (void)xgt;
    unsupported("xengnttab_fd");
    return -1;
}

EXPORT int xengnttab_grant_copy(xengnttab_handle *xgt, uint32_t count,
                                xengnttab_grant_copy_segment_t *segs)
{
    (void)xgt;
    (void)count;
    (void)segs;
    unsupported("xengnttab_grant_copy");
    return -1;
}

EXPORT int xengnttab_dmabuf_exp_from_refs(xengnttab_handle *xgt, uint32_t domid, uint32_t flags,
                                          uint32_t count, const uint32_t *refs, uint32_t *fd)
{
    (void)xgt;
    (void)domid;
    (void)flags;
    (void)count;
    (void)refs;
    (void)fd;
    unsupported("xengnttab_dmabuf_exp_from_refs");
    return -1;
}

EXPORT int xengnttab_dmabuf_exp_wait_released(xengnttab_handle *xgt, uint32_t fd,
                                              uint32_t wait_to_ms)
{
    (void)xgt;
    (void)fd;
    (void)wait_to_ms;
    unsupported("xengnttab_dmabuf_exp_wait_released");
    return -1;
}

EXPORT int xengnttab_dmabuf_imp_to_refs(xengnttab_handle *xgt, uint32_t domid, uint32_t fd,
                                        uint32_t count, uint32_t *refs)
{
    (void)xgt;
    (void)domid;
    (void)fd;
    (void)count;
    (void)refs;
    unsupported("xengnttab_dmabuf_imp_to_refs");
    return -1;
}

EXPORT int xengnttab_dmabuf_imp_release(xengnttab_handle *xgt, uint32_t fd)
{
    (void)xgt;
    (void)fd;
    unsupported("xengnttab_dmabuf_imp_release");
    return -1;
}

EXPORT int xengnttab_unmap(xengnttab_handle *xgt, void *start_address, uint32_t count)
{
    (void)xgt;
    return unmap_pages(start_address, count);
}

EXPORT xengntshr_handle *xengntshr_open(struct xentoollog_logger *logger, unsigned open_flags)
{
    (void)logger;
    (void)open_flags;
    return open_gntdev();
}

EXPORT int xengntshr_close(xengntshr_handle *xgs)
{
    return close_gntdev(xgs);
}

EXPORT int xengntshr_fd(xengntshr_handle *xgs)
{
    (void)xgs;
    unsupported("xengntshr_fd");
    return -1;
}

static struct region *share(xengntshr_handle *xgs, uint32_t domid, int count, uint32_t *refs)
{
    struct call c = {.op = OP_GNT_SHARE, .arg = {domid, (uint32_t)count, 0}, .out = refs,
                     .out_max = (uint32_t)count, .nfds = 1};
    struct region *r;
    void *addr;

    if (count < 1 || (uint32_t)count > MAX_PAGES) {
        errno = EINVAL;
        return NULL;
    }
    r = new_region(xgs, (size_t)count * PAGE, 1);
    if (!r)
        return NULL;
    if (request("share pages", &c) < 0) {
        free(r);
        return NULL;
    }
    r->handles[r->nhandles++] = c.val[0];
    addr = mmap(NULL, r->length, PROT_READ | PROT_WRITE, MAP_SHARED, c.fds[0], 0);
    close(c.fds[0]);
    if (addr == MAP_FAILED || c.nout != (uint32_t)count) {
        int saved = addr == MAP_FAILED ? errno : EPROTO;
        if (addr != MAP_FAILED)
            real_munmap(addr, r->length);
        release_handles(r->handles, r->nhandles);
        free(r);
        errno = saved;
        return NULL;
    }
    r->addr = addr;
    return r;
}

/* `writable` is ignored: the host lets the grantee map any share writable. */
EXPORT void *xengntshr_share_pages(xengntshr_handle *xgs, uint32_t domid, int count,
                                   uint32_t *refs, int writable)
{
    struct region *r = share(xgs, domid, count, refs);
    (void)writable;

    if (!r)
        return NULL;
    add_region(r);
    return r->addr;
}

EXPORT void *xengntshr_share_page_notify(xengntshr_handle *xgs, uint32_t domid, uint32_t *ref,
                                         int writable, uint32_t notify_offset,
                                         evtchn_port_t notify_port)
{
    struct region *r = share(xgs, domid, 1, ref);
    (void)writable;

    if (!r)
        return NULL;
    if (set_unmap_notify(r, notify_offset, notify_port) < 0) {
        destroy_region(r);
        return NULL;
    }
    add_region(r);
    return r->addr;
}

EXPORT int xengntshr_unshare(xengntshr_handle *xgs, void *start_address, uint32_t count)
{
    (void)xgs;
    return unmap_pages(start_address, count);
}
