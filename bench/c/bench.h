/* bench.h: what every benchmark program needs: a loud exit on a system error, a monotonic
 * clock in nanoseconds, and a cheap PRNG that both contenders of a round seed alike. */
#ifndef HOLO_BENCH_H
#define HOLO_BENCH_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Exit status 3: a system error, not a measurement. */
static void die(const char *prog, const char *what)
{
    fprintf(stderr, "%s: %s: %s\n", prog, what, strerror(errno));
    exit(3);
}

static inline uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

/* A 64-bit mix (splitmix64's finalizer): the position-dependent patterns of the workloads. */
static inline uint64_t splitmix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static inline uint64_t xorshift(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* qsort comparator for latencies. */
static inline int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile `q` (0..1) of the sorted `v[0..n)`. */
static inline uint32_t pct(const uint32_t *v, size_t n, double q)
{
    size_t k = (size_t)(q * n + 0.999999);
    return v[(k < 1 ? 1 : k > n ? n : k) - 1];
}

/* The bucket of a latency of `v` ns, as its lower bound: `v` cut to its 4 leading bits, so 8
 * buckets per power of two, each at most 1/8 of its lower bound wide (exact below 16 ns).
 * holo-bench's dist.rs buckets the same way and checks every bound it reads. */
static inline uint32_t hist_bucket(uint32_t v)
{
    if (v < 16)
        return v;
    int shift = 31 - __builtin_clz(v) - 3;
    return v >> shift << shift;
}

/* Prints `,"hist":[[BUCKET,COUNT],...]` for the sorted `v[0..n)`: the whole distribution, in
 * a few hundred bytes, that rounds can add up. */
static inline void print_hist(const uint32_t *v, size_t n)
{
    printf(",\"hist\":[");
    for (size_t i = 0; i < n;) {
        uint32_t b = hist_bucket(v[i]);
        size_t j = i;
        while (j < n && hist_bucket(v[j]) == b)
            j++;
        printf("%s[%u,%zu]", i ? "," : "", b, j - i);
        i = j;
    }
    printf("]");
}

#endif
