/* mprotect_split SIZE   (SIZE >= 64M, a multiple of 4K; use more than the budget)
 *
 * mprotect() alone, on a range that starts and ends mid-granule, so the
 * kernel splits the region's VMA inside granules that holo fills and evicts
 * as a unit: read-only and back, then PROT_NONE and back, verifying the whole
 * region (resident and spilled granules alike) after each step and writing
 * through the range once it is writable again. (madvise_semantics does the
 * same after other operations; this one isolates mprotect.)
 * Exit: 0 ok, 1 data mismatch, 2 usage, 3 system error. */
#include "common.h"
#include <sys/mman.h>

static const char *prog = "mprotect_split";

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s SIZE[K|M|G]\n", prog);
        return 2;
    }
    size_t size = parse_size(argv[1]);
    if (size < (64UL << 20) || size % PAGE) {
        fprintf(stderr, "%s: SIZE must be at least 64M and a multiple of 4K\n", prog);
        return 2;
    }
    unsigned char *r = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (r == MAP_FAILED)
        fail_sys(prog, "mmap");
    size_t off = size / 2 + 3 * PAGE, len = size / 16 + 2 * PAGE;

    fill_words(r, size, 1, 0);
    verify_or_die(prog, "initial fill", r, 0, size, 1);
    if (mprotect(r + off, len, PROT_READ) < 0)
        fail_sys(prog, "mprotect(PROT_READ)");
    verify_or_die(prog, "while a range is read-only", r, 0, size, 1);
    if (mprotect(r + off, len, PROT_READ | PROT_WRITE) < 0)
        fail_sys(prog, "mprotect(PROT_READ|PROT_WRITE)");
    verify_or_die(prog, "after mprotect back to read-write", r, 0, size, 1);
    fill_words(r + off, len, 2, off / 8);
    verify_or_die(prog, "range rewritten: before it", r, 0, off, 1);
    verify_or_die(prog, "range rewritten: the range", r, off, len, 2);
    verify_or_die(prog, "range rewritten: after it", r, off + len, size - off - len, 1);

    if (mprotect(r + off, len, PROT_NONE) < 0)
        fail_sys(prog, "mprotect(PROT_NONE)");
    verify_or_die(prog, "while PROT_NONE: before it", r, 0, off, 1);
    verify_or_die(prog, "while PROT_NONE: after it", r, off + len, size - off - len, 1);
    if (mprotect(r + off, len, PROT_READ | PROT_WRITE) < 0)
        fail_sys(prog, "mprotect(PROT_READ|PROT_WRITE)");
    verify_or_die(prog, "after PROT_NONE and back: the range", r, off, len, 2);
    fill_words(r, size, 3, 0);
    verify_or_die(prog, "whole region rewritten", r, 0, size, 3);

    printf("%s: all checks passed on %zu bytes\n", prog, size);
    return 0;
}
