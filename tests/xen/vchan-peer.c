/*
 * An echo peer on Xen's own C libxenvchan, for the interoperability tests.
 *
 *   vchan-peer server CLIENT_DOMID XS_PATH READ_MIN WRITE_MIN   echo until the client closes
 *   vchan-peer client SERVER_DOMID XS_PATH                      echo until the server closes
 *
 * Prints "echoed N" on stdout and exits 0 when the peer closed; exits 1 on an error and is
 * killed by SIGALRM after TIMEOUT seconds (environment, default 120): every step is bounded.
 * The loop is non-blocking (read what is there, write what fits, wait only when neither
 * moved), so a full ring in one direction never stops the other.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <libxenvchan.h>

static char buffer[65536];

static int echo(struct libxenvchan *vchan)
{
    size_t held = 0;
    long long echoed = 0;
    for (;;) {
        int moved = 0;
        if (held < sizeof buffer) {
            int n = libxenvchan_read(vchan, buffer + held, sizeof buffer - held);
            if (n < 0)
                break; /* closed by the peer and nothing left to read */
            held += n;
            moved |= n > 0;
        }
        if (held) {
            int n = libxenvchan_write(vchan, buffer, held);
            if (n < 0) {
                fprintf(stderr, "vchan-peer: write failed (peer gone?)\n");
                return 1;
            }
            memmove(buffer, buffer + n, held - n);
            held -= n;
            echoed += n;
            moved |= n > 0;
        }
        if (!moved) {
            if (!libxenvchan_is_open(vchan))
                break;
            libxenvchan_wait(vchan);
        }
    }
    printf("echoed %lld\n", echoed);
    return 0;
}

int main(int argc, char **argv)
{
    struct libxenvchan *vchan;
    const char *timeout = getenv("TIMEOUT");
    int rc;

    if (argc < 4 || (strcmp(argv[1], "server") == 0 && argc != 6)) {
        fprintf(stderr, "usage: %s server DOMID PATH READ_MIN WRITE_MIN | client DOMID PATH\n",
                argv[0]);
        return 2;
    }
    alarm(timeout ? atoi(timeout) : 120);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (strcmp(argv[1], "server") == 0) {
        vchan = libxenvchan_server_init(NULL, atoi(argv[2]), argv[3], atol(argv[4]), atol(argv[5]));
        if (!vchan) {
            perror("libxenvchan_server_init");
            return 1;
        }
        vchan->blocking = 0;
        fprintf(stderr, "vchan-peer: serving %s for domain %s\n", argv[3], argv[2]);
        while (libxenvchan_is_open(vchan) == 2)
            libxenvchan_wait(vchan); /* until the client has connected */
    } else {
        /* The server may not be up yet: libxenvchan has no wait, so retry for a while. */
        vchan = NULL;
        for (int i = 0; i < 600 && !vchan; i++) {
            vchan = libxenvchan_client_init(NULL, atoi(argv[2]), argv[3]);
            if (!vchan)
                usleep(100000);
        }
        if (!vchan) {
            perror("libxenvchan_client_init");
            return 1;
        }
        vchan->blocking = 0;
    }
    rc = echo(vchan);
    libxenvchan_close(vchan);
    return rc;
}
