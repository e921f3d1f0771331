/* exec_child [-w] SIZE [PROGRAM [ARGS...]]   (PROGRAM defaults to /bin/true)
 *
 * Fills SIZE bytes and verifies them (so spilled pages were refaulted once),
 * then execs PROGRAM. exec() throws the address space away: holo must release
 * this client's page table and spill slots although the process lives on.
 * With -w it prints `ready` and waits for a line on stdin before the exec, so a
 * test can look at the daemon first; the tests exec /bin/cat, which keeps the
 * process alive (reading the same stdin) while they check the daemon again.
 * Exit: PROGRAM's status; 1 data mismatch, 2 usage, 3 system error. */
#include "common.h"

static const char *prog = "exec_child";

int main(int argc, char **argv)
{
    int wait_line = argc > 1 && strcmp(argv[1], "-w") == 0;
    argv += wait_line;
    argc -= wait_line;
    if (argc < 2) {
        fprintf(stderr, "usage: %s [-w] SIZE[K|M|G] [PROGRAM [ARGS...]]\n", prog);
        return 2;
    }
    size_t size = size_arg(prog, argv[1]);
    unsigned char *buf = alloc_filled(prog, size, 0xe8ec);
    verify_or_die(prog, "before exec", buf, 0, size, 0xe8ec);

    char *def[] = {"/bin/true", NULL};
    char **cmd = argc > 2 ? argv + 2 : def;
    if (wait_line) {
        printf("ready\n");
        fflush(stdout);
        /* read(), not stdio: buffered input would be lost to the exec'd program. */
        char c;
        while (read(0, &c, 1) == 1 && c != '\n')
            ;
    }
    printf("%s: verified %zu bytes, exec %s\n", prog, size, cmd[0]);
    fflush(stdout);
    execv(cmd[0], cmd);
    fail_sys(prog, "execv");
}
