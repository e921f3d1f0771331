/* madvise_semantics SIZE   (SIZE >= 64M, a multiple of 4K)
 *
 * Address-space operations on an mmap'd anonymous region bigger than holo's
 * budget, so they hit resident and spilled granules alike. Ranges start at
 * odd page offsets on purpose: they split granules. The program tracks what
 * each page must hold and verifies the whole region after every step:
 *   MADV_DONTNEED (3 pages mid-granule, a multi-MiB range, the tail) -> zeros;
 *   refill;  MADV_FREE -> each page is its old data or zeros, nothing else;
 *   mprotect read-only / PROT_NONE and back -> data intact;
 *   munmap a middle range -> the rest intact; map the hole again -> zeros.
 * Exit: 0 ok, 1 data mismatch, 2 usage, 3 system error. */
#include "common.h"
#include <sys/mman.h>

static const char *prog = "madvise_semantics";

enum kind { ZERO, DATA, EITHER /* old data or zeros */, UNMAPPED };

static unsigned char *region;
static size_t size, npages;
static uint8_t *kind, *seed_of; /* per page */

static void mark(size_t off, size_t len, enum kind k, uint8_t seed)
{
    for (size_t p = off / PAGE; p < (off + len) / PAGE; p++) {
        kind[p] = k;
        seed_of[p] = seed;
    }
}

/* Changes what a range is expected to hold, keeping each page's last seed. */
static void set_kind(size_t off, size_t len, enum kind k)
{
    for (size_t p = off / PAGE; p < (off + len) / PAGE; p++)
        kind[p] = k;
}

static void write_range(size_t off, size_t len, uint8_t seed)
{
    fill_words(region + off, len, seed, off / 8);
    mark(off, len, DATA, seed);
}

static void verify_all(const char *step)
{
    for (size_t p = 0; p < npages; p++) {
        size_t off = p * PAGE;
        const volatile uint64_t *w = (const uint64_t *)(region + off);
        switch (kind[p]) {
        case UNMAPPED:
            break;
        case ZERO:
            verify_zero_or_die(prog, step, region, off, PAGE);
            break;
        case EITHER:
            /* The kernel frees or keeps a MADV_FREE page as a whole. */
            if (w[0] == 0) {
                verify_zero_or_die(prog, step, region, off, PAGE);
                break;
            }
            /* not zero: it must then be entirely the old data */
            verify_or_die(prog, step, region, off, PAGE, seed_of[p]);
            break;
        case DATA:
            verify_or_die(prog, step, region, off, PAGE, seed_of[p]);
            break;
        }
    }
}

static void do_madvise(size_t off, size_t len, int advice, const char *name)
{
    if (madvise(region + off, len, advice) < 0)
        fail_sys(prog, name);
}

static void do_mprotect(size_t off, size_t len, int prot)
{
    if (mprotect(region + off, len, prot) < 0)
        fail_sys(prog, "mprotect");
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s SIZE[K|M|G]\n", prog);
        return 2;
    }
    size = parse_size(argv[1]);
    if (size < (64UL << 20) || size % PAGE) {
        fprintf(stderr, "%s: SIZE must be at least 64M and a multiple of 4K\n", prog);
        return 2;
    }
    npages = size / PAGE;
    kind = calloc(npages, 1);
    seed_of = calloc(npages, 1);
    region = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (!kind || !seed_of || region == MAP_FAILED)
        fail_sys(prog, "allocation");

    write_range(0, size, 1);
    verify_all("initial fill");

    /* DONTNEED: a partial granule, a big unaligned range, the tail. */
    size_t small = 17 * PAGE, small_len = 3 * PAGE;
    size_t big = size / 8 + PAGE, big_len = size / 8;
    size_t tail_len = 5 * PAGE, tail = size - tail_len;
    do_madvise(small, small_len, MADV_DONTNEED, "madvise(MADV_DONTNEED, 3 pages)");
    do_madvise(big, big_len, MADV_DONTNEED, "madvise(MADV_DONTNEED, big range)");
    do_madvise(tail, tail_len, MADV_DONTNEED, "madvise(MADV_DONTNEED, tail)");
    mark(small, small_len, ZERO, 0);
    mark(big, big_len, ZERO, 0);
    mark(tail, tail_len, ZERO, 0);
    verify_all("MADV_DONTNEED ranges read zeros, the rest intact");

    write_range(small, small_len, 2);
    write_range(big, big_len, 2);
    write_range(tail, tail_len, 2);
    verify_all("refill after MADV_DONTNEED");

    /* MADV_FREE: pages may be dropped (zeros) or kept (old data) until written. */
    size_t fr = size / 4 + 3 * PAGE, fr_len = size / 16;
    do_madvise(fr, fr_len, MADV_FREE, "madvise(MADV_FREE)");
    set_kind(fr, fr_len, EITHER);
    verify_all("MADV_FREE range reads old data or zeros");
    write_range(fr, fr_len, 3);
    verify_all("rewrite after MADV_FREE");

    /* mprotect read-only, then inaccessible, then back: data survives. */
    size_t pr = size / 2 + 2 * PAGE, pr_len = size / 16;
    do_mprotect(pr, pr_len, PROT_READ);
    verify_all("read-only range intact");
    do_mprotect(pr, pr_len, PROT_NONE);
    set_kind(pr, pr_len, UNMAPPED); /* not readable now: skip it */
    verify_all("rest intact while a range is PROT_NONE");
    do_mprotect(pr, pr_len, PROT_READ | PROT_WRITE);
    set_kind(pr, pr_len, DATA);
    verify_all("range intact after mprotect back to read-write");
    write_range(pr, pr_len, 4);
    verify_all("range writable again");

    /* munmap a middle range: the rest is intact; a new mapping there is zeros. */
    size_t um = 5 * size / 8 + PAGE, um_len = size / 16 + 2 * PAGE;
    if (munmap(region + um, um_len) < 0)
        fail_sys(prog, "munmap(middle)");
    mark(um, um_len, UNMAPPED, 0);
    verify_all("rest intact after munmap of a middle range");
    if (mmap(region + um, um_len, PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED)
        fail_sys(prog, "mmap(MAP_FIXED into the hole)");
    mark(um, um_len, ZERO, 0);
    verify_all("new mapping in the hole reads zeros");
    write_range(um, um_len, 5);
    verify_all("new mapping in the hole holds data");

    write_range(0, size, 6);
    verify_all("whole region rewritten");
    if (munmap(region, size) < 0)
        fail_sys(prog, "munmap(all)");
    printf("%s: all checks passed on %zu bytes\n", prog, size);
    return 0;
}
