/* Helpers shared by the holo end-to-end test programs (header-only, so each
 * program still builds alone with `cc -O2 -pthread prog.c`).
 *
 * Data patterns are pure functions of (seed, logical word index): any byte
 * can be re-derived for verification, and a page that comes back as zeros,
 * as another page's data or as a stale copy is caught (splitmix64 never
 * yields the same word for two inputs, and almost never yields zero). */
#ifndef HOLO_TEST_COMMON_H
#define HOLO_TEST_COMMON_H

#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PAGE 4096UL
#define WORDS_PER_PAGE (PAGE / 8)

/* Parses "123", "64K", "256M", "2G" (binary units). Returns 0 on error. */
static inline size_t parse_size(const char *s)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s)
        return 0;
    unsigned shift = 0;
    switch (*end) {
    case '\0': break;
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    default: return 0;
    }
    if (*end != '\0' && !(end[0] == 'B' && end[1] == '\0'))
        return 0;
    if (v > (~0ULL >> shift))
        return 0;
    return (size_t)(v << shift);
}

static inline uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* The expected content of logical word `idx` under `seed`. */
static inline uint64_t pattern(uint64_t seed, uint64_t idx)
{
    return splitmix64(idx ^ (seed * 0xd1342543de82ef95ULL));
}

/* Fills `len` bytes (a multiple of 8) at `p`; the first word is logical word `first`. */
static inline void fill_words(void *p, size_t len, uint64_t seed, uint64_t first)
{
    uint64_t *w = p;
    for (size_t i = 0; i < len / 8; i++)
        w[i] = pattern(seed, first + i);
}

/* Returns the byte offset of the first mismatching word, or (size_t)-1. */
static inline size_t check_words(const void *p, size_t len, uint64_t seed, uint64_t first,
                          uint64_t *expected, uint64_t *actual)
{
    const volatile uint64_t *w = p;
    for (size_t i = 0; i < len / 8; i++) {
        uint64_t want = pattern(seed, first + i), got = w[i];
        if (got != want) {
            *expected = want;
            *actual = got;
            return i * 8;
        }
    }
    return (size_t)-1;
}

/* Returns the byte offset of the first non-zero word, or (size_t)-1. */
static inline size_t check_zero(const void *p, size_t len, uint64_t *actual)
{
    const volatile uint64_t *w = p;
    for (size_t i = 0; i < len / 8; i++) {
        if (w[i] != 0) {
            *actual = w[i];
            return i * 8;
        }
    }
    return (size_t)-1;
}

/* Reports a data mismatch in the format every program uses, and exits 1.
 * `base` is the region start, `off` the offset of the bad word in it. */
static inline void mismatch(const char *prog, const char *what, const void *base, size_t off,
                     uint64_t expected, uint64_t actual)
{
    fflush(stdout);
    printf("%s: MISMATCH (%s) at address %p (offset %zu, page %zu): expected 0x%016" PRIx64
           " actual 0x%016" PRIx64 "\n",
           prog, what, (const void *)((const char *)base + off), off, off / PAGE, expected,
           actual);
    fflush(stdout);
    _exit(1);
}

/* Verifies a pattern range and exits 1 with a report on the first bad word. */
static inline void verify_or_die(const char *prog, const char *what, const void *base, size_t off,
                          size_t len, uint64_t seed)
{
    uint64_t e, a;
    size_t bad = check_words((const char *)base + off, len, seed, off / 8, &e, &a);
    if (bad != (size_t)-1)
        mismatch(prog, what, base, off + bad, e, a);
}

/* Verifies a range reads as zeros and exits 1 with a report otherwise. */
static inline void verify_zero_or_die(const char *prog, const char *what, const void *base,
                               size_t off, size_t len)
{
    uint64_t a;
    size_t bad = check_zero((const char *)base + off, len, &a);
    if (bad != (size_t)-1)
        mismatch(prog, what, base, off + bad, 0, a);
}

static inline void fail_sys(const char *prog, const char *call)
{
    fflush(stdout);
    fprintf(stderr, "%s: %s failed: %s\n", prog, call, strerror(errno));
    printf("%s: FAILED: %s: %s\n", prog, call, strerror(errno));
    fflush(stdout);
    exit(3);
}

/* The SIZE argument: a non-zero multiple of 8 bytes, else a usage error (exit 2). */
static inline size_t size_arg(const char *prog, const char *arg)
{
    size_t size = parse_size(arg);
    if (size == 0 || size % 8) {
        fprintf(stderr, "%s: SIZE must be a non-zero multiple of 8\n", prog);
        exit(2);
    }
    return size;
}

/* SIZE bytes from malloc (under the shim: a managed region), filled with seed's pattern. */
static inline unsigned char *alloc_filled(const char *prog, size_t size, uint64_t seed)
{
    unsigned char *buf = malloc(size);
    if (!buf)
        fail_sys(prog, "malloc");
    fill_words(buf, size, seed, 0);
    return buf;
}

#endif
