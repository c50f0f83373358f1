/*
 * A peer on Xen's own C libxenvchan, for the interoperability tests (tests/test_interop_c.py).
 *
 *   vchan-node server CLIENT_DOMID PATH READ_MIN WRITE_MIN ACTION [BYTES]
 *   vchan-node client SERVER_DOMID PATH ACTION [BYTES]
 *
 * ACTION is one of
 *   exchange N  send N bytes of the pattern while receiving N bytes, then close
 *   send N      send N bytes of the pattern, then close
 *   recv        receive until the peer closes
 *   flood       send the pattern until killed
 *
 * It prints, one line each, on stdout:
 *   connected LEFT RIGHT   the vchan is up, with these ring orders (as libxenvchan sees them)
 *   receiving              (recv) the first bytes arrived
 *   sent N CRC             what it sent: byte count and CRC-32 (zlib's), in hex
 *   received N CRC         what it received
 * and exits 0, or 1 after a message on stderr. SIGALRM kills it after $TIMEOUT seconds
 * (default 300), so that a lost wake-up fails a test instead of hanging it.
 *
 * The pattern's byte i is ((i % 65521) % 251) ^ ((i / 65521 + 67) & 255): no period that a
 * ring size or a chunk size could line up with. The client waits for the server with a
 * XenStore watch on PATH/event-channel, as vchan-socket-proxy does; libxenvchan has no wait.
 * All vchan I/O is non-blocking (read what is there, write what fits, libxenvchan_wait()
 * only when neither moved), so a full ring in one direction never stalls the other.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libxenvchan.h>
#include <xenstore.h>

#define BLOCK 65521u
#define SEED 67u
#define CHUNK 65536u

static uint32_t crc_table[256];

static void crc_init(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[n] = c;
    }
}

/* zlib's crc32(): start with 0, feed the previous result back in. */
static uint32_t crc32_update(uint32_t crc, const unsigned char *data, size_t n)
{
    crc = ~crc;
    while (n--)
        crc = crc_table[(crc ^ *data++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

struct counter {
    long long bytes;
    uint32_t crc;
};

/* The pattern, generated chunk by chunk. */
struct source {
    long long total, made;
    unsigned char chunk[CHUNK];
    size_t len, off; /* the chunk holds pattern bytes made - len .. made; off are sent */
    struct counter sent;
};

static void refill(struct source *s)
{
    long long left = s->total < 0 ? CHUNK : s->total - s->made;
    size_t n = left < (long long)CHUNK ? (size_t)left : CHUNK;
    for (size_t i = 0; i < n; i++) {
        unsigned long long at = (unsigned long long)(s->made + (long long)i);
        s->chunk[i] = (unsigned char)(((at % BLOCK) % 251) ^ ((at / BLOCK + SEED) & 0xFF));
    }
    s->made += (long long)n;
    s->len = n;
    s->off = 0;
}

/* Write what fits; -1 if the vchan is closed, else whether anything moved. */
static int pump_out(struct libxenvchan *vchan, struct source *s)
{
    if (s->off == s->len) {
        if (s->total >= 0 && s->made == s->total)
            return 0;
        refill(s);
    }
    int n = libxenvchan_write(vchan, s->chunk + s->off, s->len - s->off);
    if (n < 0)
        return -1;
    s->sent.crc = crc32_update(s->sent.crc, s->chunk + s->off, (size_t)n);
    s->sent.bytes += n;
    s->off += (size_t)n;
    return n > 0;
}

static int done_sending(const struct source *s)
{
    return s->total >= 0 && s->sent.bytes == s->total;
}

static long long late_reads;

/* Read what is there; -1 at the end of the stream, else whether anything moved. */
static int pump_in(struct libxenvchan *vchan, struct counter *received)
{
    static unsigned char buffer[CHUNK];
    int n = libxenvchan_read(vchan, buffer, sizeof buffer);
    if (n < 0) {
        /* libxenvchan_read() looks at the ring and *then* at the peer's live byte, so data
         * written just before the close can still be there: look once more. */
        if (libxenvchan_data_ready(vchan) <= 0)
            return -1;
        late_reads++;
        return 0;
    }
    received->crc = crc32_update(received->crc, buffer, (size_t)n);
    received->bytes += n;
    return n > 0;
}

static void report(const char *what, const struct counter *c)
{
    printf("%s %lld %08x\n", what, c->bytes, c->crc);
}

static struct libxenvchan *connect_client(int domid, const char *path)
{
    struct libxenvchan *vchan = NULL;
    struct xs_handle *xs = xs_open(0);
    char key[256];
    char **event;
    unsigned int count;

    if (!xs) {
        perror("vchan-node: xs_open");
        return NULL;
    }
    snprintf(key, sizeof key, "%s/event-channel", path);
    if (!xs_watch(xs, key, "vchan")) {
        perror("vchan-node: xs_watch");
        xs_close(xs);
        return NULL;
    }
    /* A watch fires once when set, then at every change: try again at each. */
    while (!(vchan = libxenvchan_client_init(NULL, domid, path))) {
        event = xs_read_watch(xs, &count);
        if (!event) {
            perror("vchan-node: xs_read_watch");
            break;
        }
        free(event);
    }
    xs_unwatch(xs, key, "vchan");
    xs_close(xs);
    return vchan;
}

static int usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s server CLIENT_DOMID PATH READ_MIN WRITE_MIN ACTION [BYTES]\n"
            "       %s client SERVER_DOMID PATH ACTION [BYTES]\n"
            "ACTION: exchange N | send N | recv | flood\n",
            argv0, argv0);
    return 2;
}

int main(int argc, char **argv)
{
    static struct source source;
    struct counter received = {0, 0};
    struct libxenvchan *vchan;
    const char *timeout = getenv("TIMEOUT");
    const char *action;
    long long bytes = 0;
    int server, first, rc = 0, left, right;

    if (argc < 5)
        return usage(argv[0]);
    server = strcmp(argv[1], "server") == 0;
    if (!server && strcmp(argv[1], "client") != 0)
        return usage(argv[0]);
    first = server ? 6 : 4;
    if (argc < first + 1 || argc > first + 2)
        return usage(argv[0]);
    action = argv[first];
    if (argc == first + 2)
        bytes = atoll(argv[first + 1]);
    if (strcmp(action, "exchange") && strcmp(action, "send") && strcmp(action, "recv") &&
        strcmp(action, "flood"))
        return usage(argv[0]);

    alarm(timeout ? (unsigned)atoi(timeout) : 300);
    setvbuf(stdout, NULL, _IOLBF, 0);
    crc_init();

    if (server) {
        vchan = libxenvchan_server_init(NULL, atoi(argv[2]), argv[3], (size_t)atol(argv[4]),
                                        (size_t)atol(argv[5]));
        if (!vchan) {
            perror("vchan-node: libxenvchan_server_init");
            return 1;
        }
        vchan->blocking = 0;
        while (libxenvchan_is_open(vchan) == 2) /* until the client has connected */
            libxenvchan_wait(vchan);
        left = vchan->read.order;
        right = vchan->write.order;
    } else {
        vchan = connect_client(atoi(argv[2]), argv[3]);
        if (!vchan) {
            perror("vchan-node: libxenvchan_client_init");
            return 1;
        }
        vchan->blocking = 0;
        left = vchan->write.order;
        right = vchan->read.order;
    }
    printf("connected %d %d\n", left, right);

    int sending = strcmp(action, "recv") != 0;
    int receiving = strcmp(action, "exchange") == 0 || strcmp(action, "recv") == 0;
    source.total = strcmp(action, "flood") == 0 ? -1 : sending ? bytes : 0;
    long long expected = strcmp(action, "exchange") == 0 ? bytes : -1;
    int announced = 0;

    for (;;) {
        int moved = 0;
        if (sending && !done_sending(&source)) {
            int r = pump_out(vchan, &source);
            if (r < 0) {
                fprintf(stderr, "vchan-node: the peer closed after we sent %lld bytes\n",
                        source.sent.bytes);
                rc = 1;
                break;
            }
            moved |= r;
        }
        if (receiving && received.bytes != expected) {
            int r = pump_in(vchan, &received);
            if (r < 0) {
                if (expected >= 0) {
                    fprintf(stderr, "vchan-node: end of stream after %lld of %lld bytes\n",
                            received.bytes, expected);
                    rc = 1;
                }
                break;
            }
            moved |= r;
            if (expected < 0 && received.bytes && !announced) {
                puts("receiving");
                announced = 1;
            }
        }
        if ((!sending || done_sending(&source)) && (!receiving || received.bytes == expected))
            break;
        if (!moved)
            libxenvchan_wait(vchan);
    }
    if (sending && rc == 0)
        report("sent", &source.sent);
    if (receiving && rc == 0)
        report("received", &received);
    if (late_reads)
        fprintf(stderr, "vchan-node: data was still in the ring %lld times after "
                "libxenvchan_read() reported the close\n", late_reads);
    libxenvchan_close(vchan);
    return rc;
}
