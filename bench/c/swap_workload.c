/* The workload of `holo-bench swap`: one program, run unchanged under holo (LD_PRELOAD) and
 * under kernel swap (swapfile, zram), inside a memory cgroup smaller than its working set.
 *
 * Usage: swap_workload SIZE SEED DATA PASSES RAND_OPS
 *   DATA: "random" (every 8-byte word a hash of its position: incompressible) or "sparse" (one
 *   word in eight a hash, the rest zero: compresses ~8:1, flatters zram).
 *
 * Phases, in order, each timed with CLOCK_MONOTONIC and printed as one JSON line on stdout:
 *   write      write every page once with its position-dependent pattern
 *   seq_read   PASSES full sequential passes reading every word (latency per 4 KiB page);
 *              with PASSES > 1 also timed apart: seq_first_pass (right after the write phase,
 *              so a pager also writes out the dirty pages it kept) and seq_later_passes
 *   rand_read  RAND_OPS reads of a whole random 4 KiB page (first word checked)
 *   rand_write RAND_OPS rewrites of a whole random 4 KiB page with a new version of its pattern
 *   verify     every word checked against its pattern and version
 * and a last line, "done", with the process's CPU time and its main thread's.
 * Any wrong word is reported on stderr and the exit status is 1. */
#define _GNU_SOURCE
#include "bench.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static const char *prog = "swap_workload";

#define PAGE 4096UL
#define WORDS (PAGE / 8)

static uint64_t seed;
static int sparse;

/* The value of word `i` of the region after its page was written `ver` times. */
static inline uint64_t word(size_t i, uint8_t ver)
{
    if (sparse && i % 8)
        return 0;
    return splitmix(seed ^ i ^ ((uint64_t)ver << 56));
}

static void write_page(uint64_t *p, size_t page, uint8_t ver)
{
    for (size_t w = 0; w < WORDS; w++)
        p[w] = word(page * WORDS + w, ver);
}

static long majflt(void)
{
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return r.ru_majflt;
}


static long long tv_us(struct timeval t)
{
    return (long long)t.tv_sec * 1000000 + t.tv_usec;
}

/* `faults`: the major faults during the phase. */
static void report(const char *phase, size_t bytes, size_t ops, uint64_t ns, uint32_t *lat, long faults)
{
    printf("{\"phase\":\"%s\",\"bytes\":%zu,\"ops\":%zu,\"ns\":%llu,\"majflt\":%ld", phase, bytes, ops,
           (unsigned long long)ns, faults);
    if (lat) {
        qsort(lat, ops, sizeof *lat, cmp_u32);
        printf(",\"p50_ns\":%u,\"p90_ns\":%u,\"p99_ns\":%u,\"max_ns\":%u", pct(lat, ops, 0.5),
               pct(lat, ops, 0.9), pct(lat, ops, 0.99), lat[ops - 1]);
        print_hist(lat, ops);
    }
    printf("}\n");
    fflush(stdout);
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: swap_workload SIZE SEED random|sparse PASSES RAND_OPS\n");
        return 2;
    }
    size_t size = strtoull(argv[1], NULL, 0);
    seed = strtoull(argv[2], NULL, 0);
    sparse = !strcmp(argv[3], "sparse");
    size_t passes = strtoull(argv[4], NULL, 0), ops = strtoull(argv[5], NULL, 0);
    size_t npages = size / PAGE;
    if (!npages || size % PAGE || !passes || !ops || (!sparse && strcmp(argv[3], "random"))) {
        fprintf(stderr, "swap_workload: bad arguments\n");
        return 2;
    }

    /* Aligned to 2 MiB so that holo's granules (64 KiB by default) are whole; the bookkeeping
     * below stays under the shim's HOLO_MIN_REGION, so only the region is managed. */
    uint8_t *raw = malloc(size + (2 << 20));
    uint8_t *ver = calloc(npages, 1);
    size_t nlat = npages * passes > ops ? npages * passes : ops;
    uint32_t *lat = malloc(nlat * sizeof *lat);
    if (!raw || !ver || !lat)
        die(prog, "malloc");
    uint64_t *base = (uint64_t *)(((uintptr_t)raw + (2 << 20) - 1) & ~(uintptr_t)((2 << 20) - 1));
    memset(lat, 0, nlat * sizeof *lat); /* touched now, not inside a timed phase */

    long flt = majflt();
    uint64_t t0 = now_ns();
    for (size_t pg = 0; pg < npages; pg++)
        write_page(base + pg * WORDS, pg, 0);
    report("write", size, npages, now_ns() - t0, NULL, majflt() - flt);

    uint64_t acc = 0;
    flt = majflt();
    t0 = now_ns();
    uint64_t first_end = 0;
    long first_flt = 0;
    for (size_t pass = 0; pass < passes; pass++) {
        for (size_t pg = 0; pg < npages; pg++) {
            const volatile uint64_t *p = base + pg * WORDS;
            uint64_t a = now_ns(), x = 0;
            for (size_t w = 0; w < WORDS; w++)
                x ^= p[w];
            acc ^= x;
            lat[pass * npages + pg] = (uint32_t)(now_ns() - a);
        }
        if (pass == 0) {
            first_end = now_ns();
            first_flt = majflt();
        }
    }
    uint64_t seq_end = now_ns();
    report("seq_read", size * passes, npages * passes, seq_end - t0, lat, majflt() - flt);
    if (passes > 1) {
        report("seq_first_pass", size, npages, first_end - t0, NULL, first_flt - flt);
        report("seq_later_passes", size * (passes - 1), npages * (passes - 1), seq_end - first_end, NULL,
               majflt() - first_flt);
    }

    uint64_t rng = seed | 1;
    size_t bad = 0;
    flt = majflt();
    t0 = now_ns();
    for (size_t i = 0; i < ops; i++) {
        size_t pg = xorshift(&rng) % npages;
        const volatile uint64_t *p = base + pg * WORDS;
        uint64_t a = now_ns(), x = 0;
        for (size_t w = 0; w < WORDS; w++)
            x ^= p[w];
        lat[i] = (uint32_t)(now_ns() - a);
        bad += p[0] != word(pg * WORDS, ver[pg]);
        acc ^= x;
    }
    report("rand_read", ops * PAGE, ops, now_ns() - t0, lat, majflt() - flt);

    flt = majflt();
    t0 = now_ns();
    for (size_t i = 0; i < ops; i++) {
        size_t pg = xorshift(&rng) % npages;
        uint64_t a = now_ns();
        write_page(base + pg * WORDS, pg, ++ver[pg]);
        lat[i] = (uint32_t)(now_ns() - a);
    }
    report("rand_write", ops * PAGE, ops, now_ns() - t0, lat, majflt() - flt);

    flt = majflt();
    t0 = now_ns();
    for (size_t pg = 0; pg < npages; pg++)
        for (size_t w = 0; w < WORDS; w++) {
            uint64_t want = word(pg * WORDS + w, ver[pg]), got = base[pg * WORDS + w];
            if (got != want && bad++ < 10)
                fprintf(stderr, "swap_workload: MISMATCH at byte %zu: %016llx, expected %016llx\n",
                        (pg * WORDS + w) * 8, (unsigned long long)got, (unsigned long long)want);
        }
    report("verify", size, npages, now_ns() - t0, NULL, majflt() - flt);
    /* CPU time of the whole process and of this (the only program) thread: the rest is what
     * other threads (holo's agent, under the shim) spent. */
    struct rusage all, main_thread;
    getrusage(RUSAGE_SELF, &all);
    getrusage(RUSAGE_THREAD, &main_thread);
    printf("{\"phase\":\"done\",\"bad_words\":%zu,\"checksum\":%llu,\"utime_us\":%lld,\"stime_us\":%lld,"
           "\"main_utime_us\":%lld,\"main_stime_us\":%lld}\n",
           bad, (unsigned long long)acc, tv_us(all.ru_utime), tv_us(all.ru_stime), tv_us(main_thread.ru_utime),
           tv_us(main_thread.ru_stime));
    if (bad) {
        fprintf(stderr, "swap_workload: VERIFICATION FAILED: %zu wrong words\n", bad);
        return 1;
    }
    return 0;
}
