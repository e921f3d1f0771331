/* mremap_semantics SIZE   (SIZE >= 16M, a multiple of 4K; use more than the budget)
 *
 * mremap() and realloc() of regions bigger than holo's budget, so spilled
 * pages move along with resident ones. Data follows its *logical* offset: the
 * word at logical offset o always holds pattern(seed, o / 8) wherever the page
 * now lives. Checks:
 *   grow in place (when the space above is free): data kept, new tail zeros;
 *   grow with MREMAP_MAYMOVE past a blocker (forces a move): same;
 *   shrink: the kept part intact;
 *   MREMAP_MAYMOVE|MREMAP_FIXED of the whole region, then of a middle piece
 *   (splitting the region) and back into its hole: data intact everywhere;
 *   realloc() of a big malloc block, bigger then smaller: data kept.
 * Exit: 0 ok, 1 data mismatch, 2 usage, 3 system error. */
#include "common.h"
#include <sys/mman.h>

static const char *prog = "mremap_semantics";

static unsigned char *map_anon(size_t len, int prot)
{
    void *p = mmap(NULL, len, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        fail_sys(prog, "mmap");
    return p;
}

static unsigned char *do_mremap(void *old, size_t old_len, size_t new_len, int flags, void *to)
{
    void *p = mremap(old, old_len, new_len, flags, to);
    if (p == MAP_FAILED)
        fail_sys(prog, "mremap");
    return p;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s SIZE[K|M|G]\n", prog);
        return 2;
    }
    size_t S = parse_size(argv[1]);
    if (S < (16UL << 20) || S % PAGE) {
        fprintf(stderr, "%s: SIZE must be at least 16M and a multiple of 4K\n", prog);
        return 2;
    }
    int in_place = 0, moved = 0;

    /* 1. Grow in place: map 2S, unmap the upper half, fill the lower, grow back. */
    unsigned char *a = map_anon(2 * S, PROT_READ | PROT_WRITE);
    if (munmap(a + S, S) < 0)
        fail_sys(prog, "munmap(upper half)");
    fill_words(a, S, 1, 0);
    unsigned char *g = mremap(a, S, 2 * S, 0);
    if (g != MAP_FAILED) {
        in_place = 1;
    } else { /* something took the space above: grow by moving instead */
        g = do_mremap(a, S, 2 * S, MREMAP_MAYMOVE, NULL);
    }
    verify_or_die(prog, "grow 1: old part", g, 0, S, 1);
    verify_zero_or_die(prog, "grow 1: new tail reads zeros", g, S, S);
    fill_words(g + S, S, 1, S / 8);
    verify_or_die(prog, "grow 1: whole region after filling the tail", g, 0, 2 * S, 1);

    /* 2. Grow with MREMAP_MAYMOVE while a blocker sits right above: it must move. */
    void *blocker = mmap(g + 2 * S, PAGE, PROT_NONE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    unsigned char *b = do_mremap(g, 2 * S, 3 * S, MREMAP_MAYMOVE, NULL);
    moved = b != g;
    if (blocker != MAP_FAILED)
        munmap(blocker, PAGE);
    verify_or_die(prog, "grow 2 (moved): old part", b, 0, 2 * S, 1);
    verify_zero_or_die(prog, "grow 2 (moved): new tail reads zeros", b, 2 * S, S);

    /* 3. Shrink to an odd length: the kept part is intact. */
    size_t kept = S + S / 2 + 3 * PAGE;
    b = do_mremap(b, 3 * S, kept, 0, NULL);
    verify_or_die(prog, "shrink: kept part", b, 0, kept, 1);

    /* 4. Move the whole region to a chosen address. */
    unsigned char *t = map_anon(kept, PROT_NONE);
    t = do_mremap(b, kept, kept, MREMAP_MAYMOVE | MREMAP_FIXED, t);
    verify_or_die(prog, "move (FIXED): whole region at the new address", t, 0, kept, 1);
    size_t head = S / 4;
    fill_words(t, head, 2, 0);
    verify_or_die(prog, "move (FIXED): rewritten head", t, 0, head, 2);
    verify_or_die(prog, "move (FIXED): rest", t, head, kept - head, 1);

    /* 5. Move a middle piece out (splitting the region), rewrite it, move it back. */
    size_t off = S / 2 + PAGE, len = S / 4;
    unsigned char *t2 = map_anon(len, PROT_NONE);
    t2 = do_mremap(t + off, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, t2);
    unsigned char *piece = t2 - off; /* so that logical offsets still apply */
    verify_or_die(prog, "piece moved out: its data", piece, off, len, 1);
    verify_or_die(prog, "piece moved out: region head", t, 0, head, 2);
    verify_or_die(prog, "piece moved out: region before the hole", t, head, off - head, 1);
    verify_or_die(prog, "piece moved out: region after the hole", t, off + len,
                  kept - off - len, 1);
    fill_words(t2, len, 3, off / 8);
    do_mremap(t2, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, t + off);
    verify_or_die(prog, "piece moved back: head", t, 0, head, 2);
    verify_or_die(prog, "piece moved back: before it", t, head, off - head, 1);
    verify_or_die(prog, "piece moved back: the piece", t, off, len, 3);
    verify_or_die(prog, "piece moved back: after it", t, off + len, kept - off - len, 1);
    if (munmap(t, kept) < 0)
        fail_sys(prog, "munmap");

    /* 6. realloc of a big malloc block (glibc uses mremap for those). */
    unsigned char *m = malloc(S);
    if (!m)
        fail_sys(prog, "malloc");
    fill_words(m, S, 4, 0);
    unsigned char *r = realloc(m, 2 * S);
    if (!r)
        fail_sys(prog, "realloc(grow)");
    verify_or_die(prog, "realloc grow: old part", r, 0, S, 4);
    fill_words(r + S, S, 4, S / 8);
    verify_or_die(prog, "realloc grow: whole block", r, 0, 2 * S, 4);
    size_t small = S / 2 + 5 * PAGE;
    unsigned char *q = realloc(r, small);
    if (!q)
        fail_sys(prog, "realloc(shrink)");
    verify_or_die(prog, "realloc shrink: kept part", q, 0, small, 4);
    free(q);

    printf("%s: all checks passed on %zu bytes (grow in place: %s, grow moved: %s)\n", prog, S,
           in_place ? "yes" : "no (space taken)", moved ? "yes" : "no");
    return 0;
}
