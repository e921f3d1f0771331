/* fork_hold SIZE
 *
 * Fills SIZE bytes and forks: the child holds them too (copy-on-write, a client of holo of
 * its own). The parent prints `ready CHILD_PID` and waits for a line on stdin; then both
 * verify every word, the child first, and the parent prints `ok`. For the tests that look
 * at what a forked child inherits (its priority) while both are alive.
 * Exit: 0 ok, 1 data mismatch (in either process), 2 usage, 3 system error. */
#include "common.h"
#include <sys/wait.h>

static const char *prog = "fork_hold";

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s SIZE[K|M|G]\n", prog);
        return 2;
    }
    size_t size = size_arg(prog, argv[1]);
    unsigned char *buf = alloc_filled(prog, size, 0xf0c);
    int go[2];
    if (pipe(go) != 0)
        fail_sys(prog, "pipe");
    fflush(stdout);
    pid_t child = fork();
    if (child < 0)
        fail_sys(prog, "fork");
    if (child == 0) {
        close(go[1]);
        char c;
        if (read(go[0], &c, 1) != 1)
            fail_sys(prog, "read from the parent");
        verify_or_die(prog, "in the child", buf, 0, size, 0xf0c);
        _exit(0);
    }
    close(go[0]);
    printf("ready %d\n", (int)child);
    fflush(stdout);
    char line[256];
    if (!fgets(line, sizeof line, stdin))
        fprintf(stderr, "%s: stdin closed before a line arrived; verifying anyway\n", prog);
    if (write(go[1], "v", 1) != 1)
        fail_sys(prog, "write to the child");
    int st;
    while (waitpid(child, &st, 0) < 0)
        if (errno != EINTR)
            fail_sys(prog, "waitpid");
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "%s: the child failed (status 0x%x)\n", prog, st);
        return 1;
    }
    verify_or_die(prog, "in the parent", buf, 0, size, 0xf0c);
    printf("ok\n");
    return 0;
}
