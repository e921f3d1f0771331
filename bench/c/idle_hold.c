/* The idle client of `holo-bench overhead`: holds a region and does nothing with it.
 *
 * Usage: idle_hold SIZE SEED
 * Writes every 8-byte word of a SIZE-byte region with a hash of its position (nothing is a zero
 * page, nothing compresses), prints "ready" on stdout, then blocks reading stdin until it is
 * closed. Under the shim with a DRAM budget below SIZE, most of the region is spilled by then.
 * At the end it reads back the first word of 1024 random pages (faulting them in from holo's
 * tiers): a wrong word is reported on stderr and the exit status is 1. */
#define _GNU_SOURCE
#include "bench.h"

#include <unistd.h>

static const char *prog = "idle_hold";

#define PAGE 4096UL
#define WORDS (PAGE / 8)

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: idle_hold SIZE SEED\n");
        return 2;
    }
    size_t size = strtoull(argv[1], NULL, 0);
    uint64_t seed = strtoull(argv[2], NULL, 0);
    size_t npages = size / PAGE;
    if (!npages || size % PAGE) {
        fprintf(stderr, "idle_hold: SIZE must be a non-zero multiple of 4096\n");
        return 2;
    }
    /* Aligned to 2 MiB so that holo's granules are whole. */
    uint8_t *raw = malloc(size + (2 << 20));
    if (!raw)
        die(prog, "malloc");
    uint64_t *base = (uint64_t *)(((uintptr_t)raw + (2 << 20) - 1) & ~(uintptr_t)((2 << 20) - 1));
    for (size_t w = 0; w < npages * WORDS; w++)
        base[w] = splitmix(seed ^ w);
    printf("ready\n");
    fflush(stdout);

    char buf[64];
    while (read(0, buf, sizeof buf) > 0)
        ;

    uint64_t rng = seed | 1;
    size_t bad = 0;
    for (int i = 0; i < 1024; i++) {
        size_t w = xorshift(&rng) % npages * WORDS;
        if (base[w] != splitmix(seed ^ w) && bad++ < 10)
            fprintf(stderr, "idle_hold: MISMATCH at byte %zu\n", w * 8);
    }
    if (bad) {
        fprintf(stderr, "idle_hold: VERIFICATION FAILED: %zu wrong words\n", bad);
        return 1;
    }
    return 0;
}
