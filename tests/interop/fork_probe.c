/*
 * A process that used event channels, then forks a child that uses them too, for the shim's
 * fork handling (tests/test_xenshim.py): the child must get a platform connection of its own,
 * so that what it holds is released when it dies, not when its parent does.
 *
 *   fork-probe REMOTE_DOMID
 *
 * Opens and closes an event-channel handle (the shim keeps its idle connection), forks; the
 * child binds an unbound port for REMOTE_DOMID, prints "child bound PORT" and exits without
 * closing anything; the parent waits for it, prints "child gone", then reads stdin to its end
 * and exits 0.
 *
 *   fork-probe REMOTE_DOMID again
 *
 * Opens and closes a handle, prints "idle", waits for a line on stdin (meanwhile the host may
 * drop the idle connection), then opens a handle again, binds an unbound port for
 * REMOTE_DOMID, prints "bound PORT" and exits 0 (1 if that fails).
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <xenevtchn.h>

int main(int argc, char **argv)
{
    xenevtchn_handle *xce;
    int status, port;
    pid_t child;
    char buffer[64];

    if (argc != 2 && argc != 3)
        return 2;
    xce = xenevtchn_open(NULL, 0);
    if (!xce || xenevtchn_close(xce) < 0)
        return 1;
    if (argc == 3) {
        printf("idle\n");
        fflush(stdout);
        if (read(0, buffer, sizeof buffer) <= 0)
            return 1;
        xce = xenevtchn_open(NULL, 0);
        port = xce ? xenevtchn_bind_unbound_port(xce, (uint32_t)atoi(argv[1])) : -1;
        if (port < 0)
            return 1;
        printf("bound %d\n", port);
        return 0;
    }
    child = fork();
    if (child < 0)
        return 1;
    if (child == 0) {
        xce = xenevtchn_open(NULL, 0);
        port = xce ? xenevtchn_bind_unbound_port(xce, (uint32_t)atoi(argv[1])) : -1;
        if (port < 0)
            _exit(1);
        printf("child bound %d\n", port);
        fflush(stdout);
        _exit(0);
    }
    if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status))
        return 1;
    printf("child gone\n");
    fflush(stdout);
    while (read(0, buffer, sizeof buffer) > 0)
        ;
    return 0;
}
