/* fill_verify SIZE [PASSES]
 *
 * One big malloc(SIZE); each pass fills it with a pattern under a fresh seed,
 * then verifies every word. With SIZE above holo's DRAM budget the fill evicts
 * early granules and the verify refaults them; from the second pass on, writes
 * land on spilled granules, so overwrite-after-refault is checked as well.
 * Exit: 0 ok, 1 data mismatch, 2 usage, 3 system error. */
#include "common.h"

static const char *prog = "fill_verify";

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s SIZE[K|M|G] [PASSES]\n", prog);
        return 2;
    }
    size_t size = parse_size(argv[1]);
    long passes = argc == 3 ? strtol(argv[2], NULL, 10) : 2;
    if (size == 0 || size % 8 || passes < 1) {
        fprintf(stderr, "%s: bad SIZE or PASSES (SIZE must be a non-zero multiple of 8)\n", prog);
        return 2;
    }

    unsigned char *buf = malloc(size);
    if (!buf)
        fail_sys(prog, "malloc");

    for (long p = 0; p < passes; p++) {
        uint64_t seed = 0x5eed0000 + (uint64_t)p;
        fill_words(buf, size, seed, 0);
        char what[32];
        snprintf(what, sizeof what, "pass %ld", p + 1);
        verify_or_die(prog, what, buf, 0, size, seed);
    }
    free(buf);
    printf("%s: verified %zu bytes in %ld passes\n", prog, size, passes);
    return 0;
}
