/* sparse_and_dense SIZE
 *
 * Fills the first half of SIZE bytes sparsely (one word in eight a pattern word, the rest
 * zero: it compresses about 8:1) and the second half densely (every word a pattern word:
 * incompressible), prints `ready`, blocks until one line arrives on stdin, then verifies
 * every word of both halves and prints `ok`. Under a small DRAM budget with a compressed
 * tier, the sparse half should spill into that tier and the dense half past it.
 * Exit: 0 ok, 1 data mismatch, 2 usage, 3 system error. */
#include "common.h"

static const char *prog = "sparse_and_dense";
static const uint64_t seed = 0x5a55;

static inline uint64_t sparse_word(uint64_t idx)
{
    return idx % 8 ? 0 : pattern(seed, idx);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s SIZE[K|M|G]\n", prog);
        return 2;
    }
    size_t size = size_arg(prog, argv[1]);
    if (size % 16) {
        fprintf(stderr, "%s: SIZE must be a multiple of 16\n", prog);
        return 2;
    }
    uint64_t *w = malloc(size);
    if (!w)
        fail_sys(prog, "malloc");
    size_t half = size / 16; /* words in each half */
    for (size_t i = 0; i < half; i++)
        w[i] = sparse_word(i);
    fill_words(w + half, half * 8, seed, half);
    printf("ready\n");
    fflush(stdout);

    char line[256];
    if (!fgets(line, sizeof line, stdin))
        fprintf(stderr, "%s: stdin closed before a line arrived; verifying anyway\n", prog);
    for (size_t i = 0; i < half; i++) {
        volatile uint64_t got = w[i];
        if (got != sparse_word(i))
            mismatch(prog, "in the sparse half", w, i * 8, sparse_word(i), got);
    }
    verify_or_die(prog, "in the dense half", w, half * 8, half * 8, seed);
    printf("ok\n");
    return 0;
}
