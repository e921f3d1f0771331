/* prefetch_races SIZE ROUNDS   (SIZE >= 64M, a multiple of 4K; use more than the budget)
 *
 * Sequential scans of a region bigger than holo's budget, so that holo reads
 * ahead of the scan and installs what it read from a thread of its own, while
 * the scanning thread changes the address space just ahead of itself, where
 * that read-ahead is in flight:
 *   MADV_DONTNEED of a few pages to a few MiB ahead -> zeros when the scan
 *     gets there (then refilled, with a new seed);
 *   mremap of a range ahead to a spare mapping and back -> data intact;
 *   fork: the child checks a range ahead and exits -> data intact in both.
 * Each page's expected content (a seed, or zeros) is tracked, and every page is
 * checked on every pass. Exit: 0 ok, 1 data mismatch, 2 usage, 3 system error. */
#include "common.h"
#include <sys/mman.h>
#include <sys/wait.h>

static const char *prog = "prefetch_races";

static unsigned char *region;
static size_t npages;
static uint8_t *seed_of; /* per page: 0 = zeros, else the seed of its data */

static uint64_t rng = 0x2545f4914f6cdd1dULL;
static uint64_t next_rand(uint64_t bound)
{
    rng = splitmix64(rng);
    return rng % bound;
}

static void check_page(const char *what, size_t p)
{
    size_t off = p * PAGE;
    if (seed_of[p])
        verify_or_die(prog, what, region, off, PAGE, seed_of[p]);
    else
        verify_zero_or_die(prog, what, region, off, PAGE);
}

/* A range [first, first + count) of pages ahead of `p`, inside the region. */
static size_t ahead(size_t p, size_t max_count, size_t *count)
{
    size_t first = p + 1 + next_rand(1024); /* up to 4 MiB ahead */
    *count = 1 + next_rand(max_count);
    if (first >= npages)
        first = npages - 1;
    if (first + *count > npages)
        *count = npages - first;
    return first;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s SIZE[K|M|G] ROUNDS\n", prog);
        return 2;
    }
    size_t size = parse_size(argv[1]);
    int rounds = atoi(argv[2]);
    if (size < (64UL << 20) || size % PAGE || rounds < 1) {
        fprintf(stderr, "%s: SIZE must be at least 64M and a multiple of 4K, ROUNDS >= 1\n", prog);
        return 2;
    }
    npages = size / PAGE;
    region = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    seed_of = calloc(npages, 1);
    /* Where mremap parks a range (at most 256 pages) before moving it back. */
    unsigned char *spare = mmap(NULL, 256 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (region == MAP_FAILED || spare == MAP_FAILED || !seed_of)
        fail_sys(prog, "mmap");
    fill_words(region, size, 1, 0);
    memset(seed_of, 1, npages);

    unsigned long discarded = 0, moved = 0, forks = 0;
    for (int r = 0; r < rounds; r++) {
        uint8_t refill = (uint8_t)(2 + r % 250);
        for (size_t p = 0; p < npages; p++) {
            check_page("scan", p);
            if (!seed_of[p]) { /* discarded earlier: give it data again */
                fill_words(region + p * PAGE, PAGE, refill, p * WORDS_PER_PAGE);
                seed_of[p] = refill;
            }
            if (p % 64)
                continue;
            size_t count, first;
            switch (next_rand(16)) {
            case 0: case 1: case 2: case 3:
                first = ahead(p, 64, &count);
                if (madvise(region + first * PAGE, count * PAGE, MADV_DONTNEED) < 0)
                    fail_sys(prog, "madvise(MADV_DONTNEED)");
                memset(seed_of + first, 0, count);
                discarded += count;
                break;
            case 4: case 5:
                first = ahead(p, 256, &count);
                if (mremap(region + first * PAGE, count * PAGE, count * PAGE,
                           MREMAP_MAYMOVE | MREMAP_FIXED, spare) == MAP_FAILED)
                    fail_sys(prog, "mremap(away)");
                if (mremap(spare, count * PAGE, count * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED,
                           region + first * PAGE) == MAP_FAILED)
                    fail_sys(prog, "mremap(back)");
                /* The spare range is unmapped now: map it again for the next move. */
                if (mmap(spare, 256 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) ==
                    MAP_FAILED)
                    fail_sys(prog, "mmap(spare)");
                moved += count;
                break;
            case 6:
                if (p % 1024)
                    break;
                first = ahead(p, 1024, &count);
                fflush(stdout);
                pid_t child = fork();
                if (child < 0)
                    fail_sys(prog, "fork");
                if (child == 0) {
                    for (size_t q = first; q < first + count; q++)
                        check_page("forked child, ahead of the parent's scan", q);
                    _exit(0);
                }
                int status;
                if (waitpid(child, &status, 0) < 0)
                    fail_sys(prog, "waitpid");
                if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                    printf("%s: MISMATCH in a forked child (status %d)\n", prog, status);
                    return 1;
                }
                forks++;
                break;
            }
        }
    }
    for (size_t p = 0; p < npages; p++)
        check_page("final pass", p);
    printf("%s: all checks passed (%d rounds, %lu pages discarded, %lu moved and back, %lu forks)\n",
           prog, rounds, discarded, moved, forks);
    return 0;
}
