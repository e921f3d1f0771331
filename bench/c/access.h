/* The access pattern shared by both contenders of `holo-bench refault`, so that holo and the
 * raw userfaultfd floor are timed by the very same loop.
 *
 * Usage of either program: SIZE GRANULE SAMPLES SEED FAULT_CPU HANDLER_CPU OUT_FILE
 *   FAULT_CPU: the CPU of the timing (faulting) thread, -1 for none; HANDLER_CPU: that of the
 *   raw handler thread (holo's client ignores it: the bench pins the daemon itself).
 *
 * The pattern: a random permutation of the region's granules, taken without repeats (at most
 * SAMPLES of them); in each granule one random page, and in it one byte at a random offset, is
 * read once. Every access is timed with CLOCK_MONOTONIC. Right before each access the page's
 * present bit is read from /proc/self/pagemap (outside the timed window): an access to a page
 * that was not present is a refault, i.e. it had to be served by the fault handler.
 * Reading one page per granule, each granule once, means no access lands in a granule that an
 * earlier fault of this pass already filled.
 *
 * Every page p of the data holds the byte fill_byte(p); each read is checked against it.
 * Output file: "# key value" header lines, then one line "NS REFAULT" per access. */
#ifndef HOLO_BENCH_ACCESS_H
#define HOLO_BENCH_ACCESS_H

#define _GNU_SOURCE
#include "bench.h"

#include <fcntl.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL

struct args {
    size_t size, granule, samples;
    uint64_t seed;
    int fault_cpu, handler_cpu;
    const char *out;
};

static struct args parse_args(const char *prog, int argc, char **argv)
{
    if (argc != 8) {
        fprintf(stderr, "usage: %s SIZE GRANULE SAMPLES SEED FAULT_CPU HANDLER_CPU OUT_FILE\n",
                prog);
        exit(2);
    }
    struct args a = {
        .size = strtoull(argv[1], NULL, 0),
        .granule = strtoull(argv[2], NULL, 0),
        .samples = strtoull(argv[3], NULL, 0),
        .seed = strtoull(argv[4], NULL, 0),
        .fault_cpu = atoi(argv[5]),
        .handler_cpu = atoi(argv[6]),
        .out = argv[7],
    };
    if (a.granule < PAGE || (a.granule & (a.granule - 1)) || a.size % a.granule || !a.samples) {
        fprintf(stderr, "%s: bad arguments\n", prog);
        exit(2);
    }
    return a;
}

static inline uint8_t fill_byte(size_t page) { return (uint8_t)(page * 131 + 7); }

/* Writes every page of [p, p + size) with its fill byte. */
static void fill(uint8_t *p, size_t size)
{
    for (size_t pg = 0; pg < size / PAGE; pg++)
        memset(p + pg * PAGE, fill_byte(pg), PAGE);
}

static void pin_self(const char *prog, int cpu)
{
    if (cpu < 0)
        return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set))
        die(prog, "sched_setaffinity");
}

/* Whether the page at `p` is present in this process's page table. */
static inline int present(const char *prog, int pagemap, const void *p)
{
    uint64_t e;
    if (pread(pagemap, &e, 8, (off_t)((uintptr_t)p / PAGE * 8)) != 8)
        die(prog, "pread /proc/self/pagemap");
    return (int)(e >> 63);
}

/* How many pages of [p, p + size) are present. */
static inline size_t count_present(const char *prog, int pagemap, const uint8_t *p, size_t size)
{
    size_t n = size / PAGE, count = 0;
    uint64_t *e = malloc(n * 8);
    if (!e || pread(pagemap, e, n * 8, (off_t)((uintptr_t)p / PAGE * 8)) != (ssize_t)(n * 8))
        die(prog, "pread /proc/self/pagemap");
    for (size_t i = 0; i < n; i++)
        count += e[i] >> 63;
    free(e);
    return count;
}

/* Runs the timed access pass over `base` (granule-aligned, a.size bytes) and writes the
 * output file. `header` adds contender-specific "# key value" lines; `count_after` adds the
 * number of pages present after the pass. Exits 1 on bad data. */
static void timed_pass(const char *prog, const struct args *a, const uint8_t *base, int pagemap,
                       const char *header, int count_after)
{
    size_t ngran = a->size / a->granule, n = a->samples < ngran ? a->samples : ngran;
    size_t pages_per_gran = a->granule / PAGE;
    uint64_t s = a->seed | 1;
    /* Choose everything before timing, so the loop does only the access. */
    size_t *order = malloc(ngran * sizeof *order), *offset = malloc(n * sizeof *offset);
    uint64_t *ns = malloc(n * 8);
    uint8_t *refault = malloc(n);
    if (!order || !offset || !ns || !refault)
        die(prog, "malloc");
    for (size_t i = 0; i < ngran; i++)
        order[i] = i;
    for (size_t i = 0; i < n; i++) { /* partial Fisher-Yates: the first n of a permutation */
        size_t j = i + xorshift(&s) % (ngran - i), t = order[i];
        order[i] = order[j];
        order[j] = t;
        offset[i] = (xorshift(&s) % pages_per_gran) * PAGE + xorshift(&s) % PAGE;
    }
    pin_self(prog, a->fault_cpu);

    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        size_t off = order[i] * a->granule + offset[i];
        const volatile uint8_t *p = base + off;
        refault[i] = !present(prog, pagemap, (const void *)p);
        uint64_t t0 = now_ns();
        uint8_t v = *p;
        uint64_t t1 = now_ns();
        ns[i] = t1 - t0;
        bad += v != fill_byte(off / PAGE);
    }
    if (bad) {
        fprintf(stderr, "%s: %zu of %zu reads returned wrong data\n", prog, bad, n);
        exit(1);
    }

    FILE *f = fopen(a->out, "w");
    if (!f)
        die(prog, "fopen output");
    fprintf(f, "# size %zu\n# granule %zu\n# accesses %zu\n%s", a->size, a->granule, n, header);
    if (count_after)
        fprintf(f, "# resident_pages_after %zu\n", count_present(prog, pagemap, base, a->size));
    for (size_t i = 0; i < n; i++)
        fprintf(f, "%llu %u\n", (unsigned long long)ns[i], refault[i]);
    if (fclose(f))
        die(prog, "write output");
}

#endif
