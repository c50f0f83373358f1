/*
 * The data path of Xen's own C libxenvchan, for the benchmark (bench/run.py): the reference
 * that trio-vchan is measured against, used as a C program would use it.
 *
 *   vchan-bench server CLIENT_DOMID PATH READ_MIN WRITE_MIN SCENARIO ARGS...
 *   vchan-bench client SERVER_DOMID PATH SCENARIO ARGS...
 *
 * SCENARIO is one of (the same as bench/workers.py's):
 *   source TOTAL WRITE        write TOTAL bytes, WRITE bytes per libxenvchan_write(), close
 *   sink TOTAL                libxenvchan_read() (up to 1 MiB at a time) until TOTAL bytes
 *   ping COUNT SIZE BUSY_US   COUNT round trips of SIZE bytes: send, receive SIZE back
 *   pong COUNT SIZE BUSY_US   receive SIZE bytes and send them back, COUNT times
 *   send-file FILE CHUNK      read FILE in CHUNK-byte reads into libxenvchan_write(), close
 *   receive-file FILE CHUNK   libxenvchan_read() CHUNK bytes at most into write() on FILE,
 *                             until the peer closes
 *
 * Blocking libxenvchan calls (vchan->blocking = 1), as xencat and vchan-socket-proxy's users
 * write them; with BUSY_US > 0, ping and pong instead spin on libxenvchan_data_ready() for up
 * to BUSY_US microseconds before libxenvchan_wait() (trio-vchan's busy_poll). The client
 * waits for the server with a XenStore watch, as vchan-socket-proxy does; the server waits
 * for its client before starting. Timing starts at the first byte sent or received, as in
 * bench/workers.py.
 *
 * Prints one JSON object on stdout: {"sent": N, "seconds": S} (source), {"received": N,
 * "seconds": S} (sink), {"round_trips": [S, ...]} (ping), {"bytes": N} (the files), each with
 * "read_order" and "write_order": the rings' orders as libxenvchan uses them. Exits 0, or 1
 * after a message on stderr. SIGALRM kills it after $TIMEOUT seconds (default 300).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libxenvchan.h>
#include <xenstore.h>

#define SINK_READ (1 << 20)

static struct libxenvchan *vchan;

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

static void fail(const char *message)
{
    fprintf(stderr, "vchan-bench: %s\n", message);
    exit(1);
}

static void *allocate(size_t size)
{
    void *buffer = malloc(size ? size : 1);
    if (!buffer)
        die("vchan-bench: malloc");
    memset(buffer, 0xa5, size);
    return buffer;
}

static void print_orders(void)
{
    printf(", \"read_order\": %d, \"write_order\": %d}\n", vchan->read.order, vchan->write.order);
}

/* -- connecting ------------------------------------------------------------------------------ */

static void serve(int peer, const char *path, size_t read_min, size_t write_min)
{
    vchan = libxenvchan_server_init(NULL, peer, path, read_min, write_min);
    if (!vchan)
        die("vchan-bench: libxenvchan_server_init");
    vchan->blocking = 0;
    while (libxenvchan_is_open(vchan) == 2) /* until the client has connected */
        if (libxenvchan_wait(vchan) < 0)
            die("vchan-bench: libxenvchan_wait (for the client)");
}

/* vchan-socket-proxy's connect_vchan(): watch the path, try at each firing. */
static void connect_to(int peer, const char *path)
{
    struct xs_handle *xs = xs_open(0);
    char **event;
    unsigned int count;

    if (!xs)
        die("vchan-bench: xs_open");
    if (!xs_watch(xs, path, "path"))
        die("vchan-bench: xs_watch");
    while (!vchan && (event = xs_read_watch(xs, &count))) {
        free(event);
        vchan = libxenvchan_client_init(NULL, peer, path);
    }
    if (!vchan)
        die("vchan-bench: xs_read_watch");
    xs_close(xs);
}

/* -- scenarios ------------------------------------------------------------------------------- */

static void source(long long total, size_t write)
{
    char *block = allocate(write);
    double start = now();
    for (long long sent = 0; sent + (long long)write <= total; sent += (long long)write)
        if (libxenvchan_write(vchan, block, write) != (int)write)
            fail("source: the vchan closed before everything was sent");
    double seconds = now() - start;
    printf("{\"sent\": %lld, \"seconds\": %.9f", total, seconds);
    print_orders();
}

static void sink(long long total)
{
    char *buffer = allocate(SINK_READ);
    long long received = 0;
    double start = 0;
    while (received < total) {
        int n = libxenvchan_read(vchan, buffer, SINK_READ);
        if (n <= 0) {
            fprintf(stderr, "vchan-bench: sink: end of stream after %lld of %lld bytes\n",
                    received, total);
            exit(1);
        }
        if (!received)
            start = now();
        received += n;
    }
    printf("{\"received\": %lld, \"seconds\": %.9f", received, now() - start);
    print_orders();
}

/* Receive exactly size bytes: libxenvchan_recv(), or (busy > 0) non-blocking reads with a
 * spin on libxenvchan_data_ready() of up to busy seconds before each wait. */
static void receive_exactly(char *buffer, size_t size, double busy)
{
    if (busy <= 0) {
        if (libxenvchan_recv(vchan, buffer, size) != (int)size)
            fail("the peer closed in the middle of a message");
        return;
    }
    size_t got = 0;
    while (got < size) {
        int n = libxenvchan_read(vchan, buffer + got, size - got);
        if (n < 0)
            fail("the peer closed in the middle of a message");
        got += (size_t)n;
        if (n)
            continue;
        double deadline = now() + busy;
        while (libxenvchan_data_ready(vchan) == 0 && now() < deadline)
            ;
        if (libxenvchan_data_ready(vchan) == 0 && libxenvchan_wait(vchan) < 0)
            die("vchan-bench: libxenvchan_wait");
    }
}

static void send_message(const char *message, size_t size)
{
    if (libxenvchan_send(vchan, message, size) != (int)size)
        fail("the peer closed before the message was sent");
}

static void ping_pong(int ping, long count, size_t size, double busy)
{
    char *message = allocate(size);
    double *times = ping ? calloc((size_t)count, sizeof *times) : NULL;
    if (ping && !times)
        die("vchan-bench: calloc");
    /* libxenvchan_send() in non-blocking mode writes nothing rather than part of a message;
     * blocking mode waits for room. The messages always fit, so busy-polling is unaffected. */
    vchan->blocking = busy <= 0;
    for (long i = 0; i < count; i++) {
        if (ping) {
            double start = now();
            send_message(message, size);
            receive_exactly(message, size, busy);
            times[i] = now() - start;
        } else {
            receive_exactly(message, size, busy);
            send_message(message, size);
        }
    }
    if (!ping) {
        printf("{\"round_trips\": []");
    } else {
        printf("{\"round_trips\": [");
        for (long i = 0; i < count; i++)
            printf("%s%.9f", i ? ", " : "", times[i]);
        printf("]");
    }
    print_orders();
}

static void send_file(const char *file, size_t chunk)
{
    char *buffer = allocate(chunk);
    long long total = 0;
    int fd = open(file, O_RDONLY);
    if (fd < 0)
        die("vchan-bench: send-file: open");
    for (;;) {
        ssize_t n = read(fd, buffer, chunk);
        if (n < 0)
            die("vchan-bench: send-file: read");
        if (n == 0)
            break;
        if (libxenvchan_write(vchan, buffer, (size_t)n) != n)
            fail("send-file: the vchan closed before everything was sent");
        total += n;
    }
    close(fd);
    printf("{\"bytes\": %lld", total);
    print_orders();
}

static void receive_file(const char *file, size_t chunk)
{
    char *buffer = allocate(chunk);
    long long total = 0;
    int fd = open(file, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        die("vchan-bench: receive-file: open");
    for (;;) {
        int n = libxenvchan_read(vchan, buffer, chunk);
        if (n < 0)
            break; /* the peer closed and everything it sent has been read */
        for (int done = 0; done < n;) {
            ssize_t w = write(fd, buffer + done, (size_t)(n - done));
            if (w < 0)
                die("vchan-bench: receive-file: write");
            done += (int)w;
        }
        total += n;
    }
    if (close(fd) < 0)
        die("vchan-bench: receive-file: close");
    printf("{\"bytes\": %lld", total);
    print_orders();
}

static int usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s server CLIENT_DOMID PATH READ_MIN WRITE_MIN SCENARIO ARGS...\n"
            "       %s client SERVER_DOMID PATH SCENARIO ARGS...\n"
            "SCENARIO: source TOTAL WRITE | sink TOTAL | ping COUNT SIZE BUSY_US |"
            " pong COUNT SIZE BUSY_US | send-file FILE CHUNK | receive-file FILE CHUNK\n",
            argv0, argv0);
    return 2;
}

int main(int argc, char **argv)
{
    const char *timeout = getenv("TIMEOUT");
    int first;

    alarm(timeout ? (unsigned)atoi(timeout) : 300);
    if (argc >= 7 && strcmp(argv[1], "server") == 0) {
        serve(atoi(argv[2]), argv[3], (size_t)atol(argv[4]), (size_t)atol(argv[5]));
        first = 6;
    } else if (argc >= 5 && strcmp(argv[1], "client") == 0) {
        connect_to(atoi(argv[2]), argv[3]);
        first = 4;
    } else {
        return usage(argv[0]);
    }
    vchan->blocking = 1;
    const char *scenario = argv[first];
    char **args = argv + first + 1;
    int count = argc - first - 1;
    if (strcmp(scenario, "source") == 0 && count == 2)
        source(atoll(args[0]), (size_t)atol(args[1]));
    else if (strcmp(scenario, "sink") == 0 && count == 1)
        sink(atoll(args[0]));
    else if ((strcmp(scenario, "ping") == 0 || strcmp(scenario, "pong") == 0) && count == 3)
        ping_pong(scenario[1] == 'i', atol(args[0]), (size_t)atol(args[1]), atof(args[2]) * 1e-6);
    else if (strcmp(scenario, "send-file") == 0 && count == 2)
        send_file(args[0], (size_t)atol(args[1]));
    else if (strcmp(scenario, "receive-file") == 0 && count == 2)
        receive_file(args[0], (size_t)atol(args[1]));
    else
        return usage(argv[0]);
    fflush(stdout);
    libxenvchan_close(vchan);
    return 0;
}
