/* hold_and_check SIZE
 *
 * Fills SIZE bytes, prints `ready`, blocks until one line arrives on stdin,
 * then verifies everything and prints `ok`. The end-to-end tests kill this
 * program, or the daemon, while it waits:
 *   - SIGKILL of the program: the daemon must release its pages and slots;
 *   - kill of the daemon: verifying spilled pages must stall, and the shim must
 *     kill the program after HOLO_DAEMON_TIMEOUT. Printing `ok` (data served as
 *     zeros would not pass, but a silent fallback might) or a mismatch is a bug.
 * Exit: 0 ok, 1 data mismatch, 2 usage, 3 system error. */
#include "common.h"

static const char *prog = "hold_and_check";

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s SIZE[K|M|G]\n", prog);
        return 2;
    }
    size_t size = size_arg(prog, argv[1]);
    unsigned char *buf = alloc_filled(prog, size, 0x401d);
    printf("ready\n");
    fflush(stdout);

    char line[256];
    if (!fgets(line, sizeof line, stdin)) {
        fprintf(stderr, "%s: stdin closed before a line arrived; verifying anyway\n", prog);
    }
    verify_or_die(prog, "after the wait", buf, 0, size, 0x401d);
    printf("ok\n");
    return 0;
}
