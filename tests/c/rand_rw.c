/* rand_rw SIZE OPS
 *
 * Random 4 KiB access over a working set larger than holo's DRAM budget. Fills SIZE with
 * seed A's pattern; then OPS reads of random pages (each page verified); then OPS writes of
 * random pages (seed B's pattern for the page, remembered in a bitmap), each followed by a
 * verified read of another random page; then one sequential pass that verifies every page
 * (seed B where written, seed A elsewhere).
 * Exit: 0 ok, 1 data mismatch, 2 usage, 3 system error. */
#include "common.h"

static const char *prog = "rand_rw";

static uint64_t rng = 0x2545f4914f6cdd1dULL;

static size_t random_page(size_t pages)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng % pages;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s SIZE OPS\n", prog);
        return 2;
    }
    size_t size = size_arg(prog, argv[1]);
    long ops = strtol(argv[2], NULL, 10);
    if (size % PAGE || ops < 1) {
        fprintf(stderr, "%s: SIZE must be whole pages and OPS positive\n", prog);
        return 2;
    }
    const uint64_t a = 0xa11ce, b = 0xb0b;
    size_t pages = size / PAGE;
    unsigned char *buf = alloc_filled(prog, size, a);
    unsigned char *written = calloc(pages / 8 + 1, 1);
    if (!written)
        fail_sys(prog, "calloc");
#define SEED_OF(p) ((written[(p) / 8] >> ((p) % 8)) & 1 ? b : a)

    for (long i = 0; i < ops; i++) {
        size_t p = random_page(pages);
        verify_or_die(prog, "random read", buf, p * PAGE, PAGE, a);
    }
    for (long i = 0; i < ops; i++) {
        size_t p = random_page(pages);
        fill_words(buf + p * PAGE, PAGE, b, p * WORDS_PER_PAGE);
        written[p / 8] |= 1 << (p % 8);
        size_t q = random_page(pages);
        verify_or_die(prog, "read among random writes", buf, q * PAGE, PAGE, SEED_OF(q));
    }
    size_t rewritten = 0;
    for (size_t p = 0; p < pages; p++) {
        verify_or_die(prog, "sequential pass", buf, p * PAGE, PAGE, SEED_OF(p));
        rewritten += SEED_OF(p) == b;
    }
    printf("%s: verified %zu bytes after %ld random reads and %ld random writes (%zu pages rewritten)\n", prog,
           size, ops, ops, rewritten);
    free(written);
    free(buf);
    return 0;
}
