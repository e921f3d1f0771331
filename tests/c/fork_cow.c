/* fork_cow [SIZE]   (default 64M)
 *
 * Copy-on-write across fork() with a region bigger than holo's budget, so
 * many pages are spilled when the fork happens and the two processes then
 * share spill slots. Parent fills pattern A and forks:
 *   child:  verifies A (while the parent is overwriting), waits until the
 *           parent has written all of P, verifies A again (the parent's writes
 *           must be invisible), writes C, verifies C, forks a grandchild that
 *           verifies C, writes G and verifies G, then re-verifies C;
 *   parent: writes P, tells the child, verifies P, waits for the child, and
 *           verifies P again (the child's and grandchild's writes must be
 *           invisible).
 * Exit: 0 ok, 1 data mismatch (in any process), 2 usage, 3 system error. */
#include "common.h"
#include <signal.h>
#include <sys/wait.h>

static const char *prog = "fork_cow";

enum { SEED_A = 0xA, SEED_P = 0xB, SEED_C = 0xC, SEED_G = 0xD };

/* Waits for `pid` and returns its exit code, reporting abnormal ends. */
static int reap(pid_t pid, const char *who)
{
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            fail_sys(prog, "waitpid");
    if (WIFEXITED(st)) {
        if (WEXITSTATUS(st) != 0)
            printf("%s: %s exited with status %d\n", prog, who, WEXITSTATUS(st));
        return WEXITSTATUS(st);
    }
    printf("%s: %s killed by signal %d\n", prog, who, WTERMSIG(st));
    return 1;
}

static int grandchild(unsigned char *buf, size_t size)
{
    verify_or_die(prog, "grandchild sees child's C", buf, 0, size, SEED_C);
    fill_words(buf, size, SEED_G, 0);
    verify_or_die(prog, "grandchild reads back G", buf, 0, size, SEED_G);
    return 0;
}

static int child(unsigned char *buf, size_t size, int token_fd)
{
    verify_or_die(prog, "child sees A while parent writes P", buf, 0, size, SEED_A);
    char token;
    if (read(token_fd, &token, 1) != 1)
        fail_sys(prog, "read(token)");
    verify_or_die(prog, "child sees A after parent wrote P", buf, 0, size, SEED_A);
    fill_words(buf, size, SEED_C, 0);
    verify_or_die(prog, "child reads back C", buf, 0, size, SEED_C);

    fflush(stdout);
    pid_t g = fork();
    if (g < 0)
        fail_sys(prog, "fork(grandchild)");
    if (g == 0)
        exit(grandchild(buf, size));
    if (reap(g, "grandchild") != 0)
        return 1;
    verify_or_die(prog, "child still sees C after grandchild wrote G", buf, 0, size, SEED_C);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 2) {
        fprintf(stderr, "usage: %s [SIZE[K|M|G]]\n", prog);
        return 2;
    }
    size_t size = argc == 2 ? parse_size(argv[1]) : 64UL << 20;
    if (size == 0 || size % 8) {
        fprintf(stderr, "%s: SIZE must be a non-zero multiple of 8\n", prog);
        return 2;
    }
    unsigned char *buf = malloc(size);
    if (!buf)
        fail_sys(prog, "malloc");
    fill_words(buf, size, SEED_A, 0);

    int token[2];
    if (pipe(token) < 0)
        fail_sys(prog, "pipe");
    fflush(stdout); /* nothing buffered may be printed twice */
    pid_t c = fork();
    if (c < 0)
        fail_sys(prog, "fork");
    if (c == 0) {
        close(token[1]);
        exit(child(buf, size, token[0]));
    }
    close(token[0]);
    signal(SIGPIPE, SIG_IGN);

    fill_words(buf, size, SEED_P, 0);
    /* EPIPE means the child already died; reap() below reports why. */
    if (write(token[1], "P", 1) != 1 && errno != EPIPE)
        fail_sys(prog, "write(token)");
    verify_or_die(prog, "parent reads back P", buf, 0, size, SEED_P);
    if (reap(c, "child") != 0)
        return 1;
    verify_or_die(prog, "parent still sees P after child wrote C", buf, 0, size, SEED_P);

    free(buf);
    printf("%s: parent, child and grandchild each verified %zu bytes\n", prog, size);
    return 0;
}
