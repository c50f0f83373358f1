/*
 * Connection setup on Xen's own C libxenvchan, for the benchmark (bench/run.py, "setup").
 *
 *   vchan-setup server CLIENT_DOMID PATH_PREFIX PORTS CONNECTIONS READ_MIN WRITE_MIN [WITHDRAW]
 *   vchan-setup sequential SERVER_DOMID PATH_PREFIX WARMUP COUNT
 *   vchan-setup concurrent SERVER_DOMID PATH_PREFIX PORTS WARMUP_ROUNDS ROUNDS
 *
 * Port i is the XenStore directory PATH_PREFIX followed by i in decimal.
 *
 * server: one thread per port, each serving CONNECTIONS connections one after the other, as
 *   vchan-socket-proxy's server does: libxenvchan_server_init(), wait for the client, receive
 *   one byte, send it back, libxenvchan_close(), and again. WITHDRAW says when the server
 *   removes its XenStore advertisement: "connected" (the default) as soon as its client is in,
 *   as trio-vchan does, or "close": in libxenvchan_close(), as libxenvchan does by itself.
 * sequential: one client on port 0: connect, send one byte, receive it back, close; WARMUP
 *   times untimed, then COUNT times timed.
 * concurrent: one thread per port; in each round every thread makes one such connection, all
 *   starting together (a barrier) and the round ending when the last has closed. WARMUP_ROUNDS
 *   untimed rounds, then ROUNDS timed ones.
 *
 * A client connects as vchan-socket-proxy's client does (connect_vchan()): open XenStore,
 * watch the vchan's directory, and try libxenvchan_client_init() each time the watch fires
 * (it fires once when set). With WITHDRAW "close" a client can find the previous
 * connection's advertisement after that server has closed its end: the attach then fails, or
 * succeeds on a closed vchan (write or read returns -1), and the client tries again, counted
 * in "retries". Worse, the port number it binds may by then be another server's (numbers
 * are reused), and when the failed attach unbinds it, Xen returns that server's port to
 * unbound but the simulated host leaves it closed, and that server waits forever. So the
 * benchmark uses "connected".
 *
 * Prints one JSON object on stdout: the clients {"seconds": S, "connections": N,
 * "retries": R}, with "latencies": [...] (seconds per connection) for sequential; the server
 * {"served": N}. Exits 0, or 1 after a message on stderr. SIGALRM kills it after $TIMEOUT
 * seconds (default 300).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <libxenvchan.h>
#include <xenstore.h>

#define MAX_PORTS 4096
#define MAX_ATTEMPTS 100

static int peer_domid;
static const char *prefix;
static size_t read_min, write_min;
static long per_port;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void port_path(char *buf, size_t size, int port)
{
    if ((size_t)snprintf(buf, size, "%s%d", prefix, port) >= size) {
        fprintf(stderr, "vchan-setup: path too long\n");
        exit(1);
    }
}

/* Receive exactly one byte (non-blocking reads, libxenvchan_wait() between): 0, or -1 if the
 * vchan closed first. */
static int receive_byte(struct libxenvchan *vchan, char *byte)
{
    for (;;) {
        int n = libxenvchan_read(vchan, byte, 1);
        if (n < 0)
            return -1;
        if (n == 1)
            return 0;
        if (libxenvchan_wait(vchan) < 0)
            return -1;
    }
}

/* -- server ----------------------------------------------------------------------------------- */

static int withdraw_early = 1;

/* What libxenvchan_close() does last (close_xs_srv(): open XenStore, remove the vchan's
 * directory, close), done now; libxenvchan_close() then skips it. */
static void withdraw(struct libxenvchan *vchan)
{
    struct xs_handle *xs = xs_open(0);
    if (!xs)
        die("vchan-setup: xs_open");
    if (!xs_rm(xs, XBT_NULL, vchan->xs_path))
        die("vchan-setup: xs_rm");
    xs_close(xs);
    free(vchan->xs_path);
    vchan->xs_path = NULL;
}

static void *serve_port(void *arg)
{
    int port = (int)(long)arg;
    char path[256];
    char byte;

    port_path(path, sizeof path, port);
    for (long i = 0; i < per_port; i++) {
        struct libxenvchan *vchan =
            libxenvchan_server_init(NULL, peer_domid, path, read_min, write_min);
        if (!vchan)
            die("vchan-setup: libxenvchan_server_init");
        vchan->blocking = 0;
        while (libxenvchan_is_open(vchan) == 2) /* until the client has connected */
            if (libxenvchan_wait(vchan) < 0)
                die("vchan-setup: libxenvchan_wait");
        if (withdraw_early)
            withdraw(vchan);
        if (receive_byte(vchan, &byte) < 0 || libxenvchan_write(vchan, &byte, 1) != 1) {
            fprintf(stderr, "vchan-setup: the client closed before the echo\n");
            exit(1);
        }
        libxenvchan_close(vchan);
    }
    return NULL;
}

/* -- clients ---------------------------------------------------------------------------------- */

/* vchan-socket-proxy's connect_vchan(), without libxenctrl's "is the server dying?". */
static struct libxenvchan *connect_vchan(const char *path)
{
    struct libxenvchan *vchan = NULL;
    struct xs_handle *xs = xs_open(0);
    char **event;
    unsigned int count;

    if (!xs)
        die("vchan-setup: xs_open");
    if (!xs_watch(xs, path, "path"))
        die("vchan-setup: xs_watch");
    while ((event = xs_read_watch(xs, &count))) {
        free(event);
        vchan = libxenvchan_client_init(NULL, peer_domid, path);
        if (vchan)
            break;
    }
    if (!vchan)
        die("vchan-setup: xs_read_watch");
    xs_close(xs);
    return vchan;
}

/* Connect, send one byte, receive it back, close; the number of retries (see the top). */
static long one_connection(int port)
{
    char path[256];
    char byte = 'x';

    port_path(path, sizeof path, port);
    for (long attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
        struct libxenvchan *vchan = connect_vchan(path);
        vchan->blocking = 0;
        int ok = libxenvchan_write(vchan, &byte, 1) == 1 && receive_byte(vchan, &byte) == 0;
        libxenvchan_close(vchan);
        if (ok) {
            if (byte != 'x') {
                fprintf(stderr, "vchan-setup: the echo was %d, not 'x'\n", byte);
                exit(1);
            }
            return attempt;
        }
    }
    fprintf(stderr, "vchan-setup: %d attempts on %s found only closed vchans\n", MAX_ATTEMPTS,
            path);
    exit(1);
}

static int sequential(long warmup, long count)
{
    double *latencies = calloc((size_t)count, sizeof *latencies);
    long retries = 0;

    if (!latencies)
        die("vchan-setup: calloc");
    for (long i = 0; i < warmup; i++)
        one_connection(0);
    double start = now();
    for (long i = 0; i < count; i++) {
        double begin = now();
        retries += one_connection(0);
        latencies[i] = now() - begin;
    }
    double seconds = now() - start;
    printf("{\"seconds\": %.9f, \"connections\": %ld, \"retries\": %ld, \"latencies\": [",
           seconds, count, retries);
    for (long i = 0; i < count; i++)
        printf("%s%.9f", i ? ", " : "", latencies[i]);
    printf("]}\n");
    free(latencies);
    return 0;
}

static pthread_barrier_t round_start, round_end;
static long warmup_rounds, rounds_total;
static long thread_retries[MAX_PORTS];

static void *client_port(void *arg)
{
    int port = (int)(long)arg;
    for (long r = 0; r < rounds_total; r++) {
        pthread_barrier_wait(&round_start);
        long retries = one_connection(port);
        if (r >= warmup_rounds)
            thread_retries[port] += retries;
        pthread_barrier_wait(&round_end);
    }
    return NULL;
}

static int concurrent(int ports, long warmup, long rounds)
{
    pthread_t threads[MAX_PORTS];
    double seconds = 0;
    long retries = 0;

    warmup_rounds = warmup;
    rounds_total = warmup + rounds;
    if (pthread_barrier_init(&round_start, NULL, (unsigned)ports + 1) ||
        pthread_barrier_init(&round_end, NULL, (unsigned)ports + 1))
        die("vchan-setup: pthread_barrier_init");
    for (int i = 0; i < ports; i++)
        if ((errno = pthread_create(&threads[i], NULL, client_port, (void *)(long)i)))
            die("vchan-setup: pthread_create");
    for (long r = 0; r < rounds_total; r++) {
        pthread_barrier_wait(&round_start);
        double start = now();
        pthread_barrier_wait(&round_end);
        if (r >= warmup)
            seconds += now() - start;
    }
    for (int i = 0; i < ports; i++) {
        pthread_join(threads[i], NULL);
        retries += thread_retries[i];
    }
    printf("{\"seconds\": %.9f, \"connections\": %ld, \"retries\": %ld}\n", seconds,
           (long)ports * rounds, retries);
    return 0;
}

static int usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s server CLIENT_DOMID PATH_PREFIX PORTS CONNECTIONS READ_MIN WRITE_MIN "
            "[connected|close]\n"
            "       %s sequential SERVER_DOMID PATH_PREFIX WARMUP COUNT\n"
            "       %s concurrent SERVER_DOMID PATH_PREFIX PORTS WARMUP_ROUNDS ROUNDS\n",
            argv0, argv0, argv0);
    return 2;
}

static int spawn_and_join(int ports, void *(*body)(void *))
{
    pthread_t threads[MAX_PORTS];
    for (int i = 0; i < ports; i++)
        if ((errno = pthread_create(&threads[i], NULL, body, (void *)(long)i)))
            die("vchan-setup: pthread_create");
    for (int i = 0; i < ports; i++)
        pthread_join(threads[i], NULL);
    return 0;
}

int main(int argc, char **argv)
{
    const char *timeout = getenv("TIMEOUT");
    struct rlimit limit;

    if (argc < 4)
        return usage(argv[0]);
    /* A connection holds about ten fds (event channel, grants, XenStore): raise the soft
     * limit, as bench/workers.py does for trio-vchan. */
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0) {
        limit.rlim_cur = limit.rlim_max;
        setrlimit(RLIMIT_NOFILE, &limit);
    }
    alarm(timeout ? (unsigned)atoi(timeout) : 300);
    peer_domid = atoi(argv[2]);
    prefix = argv[3];
    if (strcmp(argv[1], "server") == 0 && (argc == 8 || argc == 9)) {
        if (argc == 9 && strcmp(argv[8], "close") == 0)
            withdraw_early = 0;
        else if (argc == 9 && strcmp(argv[8], "connected") != 0)
            return usage(argv[0]);
        int ports = atoi(argv[4]);
        if (ports < 1 || ports > MAX_PORTS)
            return usage(argv[0]);
        per_port = atol(argv[5]);
        read_min = (size_t)atol(argv[6]);
        write_min = (size_t)atol(argv[7]);
        spawn_and_join(ports, serve_port);
        printf("{\"served\": %ld}\n", (long)ports * per_port);
        return 0;
    }
    if (strcmp(argv[1], "sequential") == 0 && argc == 6)
        return sequential(atol(argv[4]), atol(argv[5]));
    if (strcmp(argv[1], "concurrent") == 0 && argc == 7) {
        int ports = atoi(argv[4]);
        if (ports < 1 || ports > MAX_PORTS)
            return usage(argv[0]);
        return concurrent(ports, atol(argv[5]), atol(argv[6]));
    }
    return usage(argv[0]);
}
