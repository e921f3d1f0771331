/* hot_reread SIZE HOT
 *
 * Fills SIZE bytes, prints `ready`, then follows commands on stdin, one a line:
 *   hot    verify the first HOT bytes (the hot subset) and print `hot ok`;
 *   check  verify all SIZE bytes, print `ok` and exit.
 * With SIZE and HOT above holo's DRAM budget, each `hot` reads the hot subset back from the
 * tiers below DRAM: the placement tests drive promotions with it.
 * Exit: 0 ok, 1 data mismatch, 2 usage, 3 system error. */
#include "common.h"

static const char *prog = "hot_reread";

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s SIZE[K|M|G] HOT[K|M|G]\n", prog);
        return 2;
    }
    size_t size = parse_size(argv[1]), hot = parse_size(argv[2]);
    if (size == 0 || size % 8 || hot % 8 || hot > size) {
        fprintf(stderr, "%s: SIZE must be a non-zero multiple of 8, HOT one no larger\n", prog);
        return 2;
    }
    unsigned char *buf = alloc_filled(prog, size, 0x407);
    printf("ready\n");
    fflush(stdout);

    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (strcmp(line, "hot\n") == 0) {
            verify_or_die(prog, "hot subset", buf, 0, hot, 0x407);
            printf("hot ok\n");
            fflush(stdout);
        } else if (strcmp(line, "check\n") == 0) {
            verify_or_die(prog, "everything", buf, 0, size, 0x407);
            printf("ok\n");
            return 0;
        } else {
            fprintf(stderr, "%s: unknown command %s", prog, line);
            return 2;
        }
    }
    fprintf(stderr, "%s: stdin closed before `check`\n", prog);
    return 2;
}
