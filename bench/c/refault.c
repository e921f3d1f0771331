/* The holo contender of `holo-bench refault`; run under LD_PRELOAD=libholo.so.
 *
 * mallocs SIZE (a holo region), writes every page so that what exceeds the daemon's DRAM
 * budget is evicted to the spill tier, waits until the resident count stops moving, then runs
 * the timed pass of access.h. Arguments: see access.h. */
#include "access.h"

static const char *prog = "refault";

int main(int argc, char **argv)
{
    struct args a = parse_args(prog, argc, argv);
    /* malloc's result is only 16-byte aligned: over-allocate and align to the granule, so
     * that our granules are the daemon's (its windows are aligned on addresses). */
    uint8_t *raw = malloc(a.size + a.granule);
    if (!raw)
        die(prog, "malloc");
    uint8_t *base = (uint8_t *)(((uintptr_t)raw + a.granule - 1) & ~(uintptr_t)(a.granule - 1));
    int pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (pagemap < 0)
        die(prog, "open /proc/self/pagemap");

    uint64_t t0 = now_ns();
    fill(base, a.size);
    uint64_t fill_ns = now_ns() - t0;

    /* The daemon evicts asynchronously: wait until the resident count stops moving. */
    size_t resident = count_present(prog, pagemap, base, a.size), last = (size_t)-1;
    for (int still = 0, tries = 0; still < 3 && tries < 200; tries++) {
        usleep(20000);
        last = resident;
        resident = count_present(prog, pagemap, base, a.size);
        still = resident == last ? still + 1 : 0;
    }

    char header[128];
    snprintf(header, sizeof header, "# fill_ns %llu\n# resident_pages_before %zu\n",
             (unsigned long long)fill_ns, resident);
    timed_pass(prog, &a, base, pagemap, header, 1);
    return 0;
}
