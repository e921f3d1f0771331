/* The workload of `holo-bench threads`: fault throughput with several faulting threads.
 *
 * Usage: threads_fault raw|holo SIZE GRANULE THREADS SEED
 *   raw:  the region is registered with a raw userfaultfd (MISSING mode) and one handler thread
 *         resolves each fault with one UFFDIO_COPY of the granule from a prefilled buffer (the
 *         floor, as in raw_uffd.c); every access faults.
 *   holo: run under LD_PRELOAD=libholo.so; the region is malloc'd and written in full, so that
 *         what exceeds the daemon's budget is evicted; the pass then waits for the resident
 *         count to settle.
 * The timed pass: the region's granules in a random order, split into THREADS contiguous
 * slices, one per thread; each thread reads one byte of one random page of each of its
 * granules (timed, checked), all threads released together. Prints one JSON line: accesses,
 * faults (raw: all; holo: the accessed pages not present right before the pass), the pass's
 * wall time, and per-access latency percentiles and histogram over all threads. Exit 1 on wrong
 * data. */
#define _GNU_SOURCE
#include "bench.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static const char *prog = "threads_fault";

#define PAGE 4096UL

static size_t size, granule, nthreads, ngran;
static uint8_t *base, *src;
static int uffd;
static size_t *order, *page_in;
static uint32_t *lat;
static size_t bad;
static pthread_barrier_t start;

static inline uint8_t fill_byte(size_t page) { return (uint8_t)(page * 131 + 7); }

static void fill(uint8_t *p)
{
    for (size_t pg = 0; pg < size / PAGE; pg++)
        memset(p + pg * PAGE, fill_byte(pg), PAGE);
}

static void *map(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        die(prog, "mmap");
    return p;
}

/* How many of the pages the pass will read are present now (one pagemap read per page). */
static size_t present_targets(void)
{
    int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        die(prog, "open /proc/self/pagemap");
    size_t n = 0;
    for (size_t i = 0; i < ngran; i++) {
        uint64_t e;
        uintptr_t p = (uintptr_t)base + order[i] * granule + page_in[i] * PAGE;
        if (pread(fd, &e, 8, (off_t)(p / PAGE * 8)) != 8)
            die(prog, "pread pagemap");
        n += e >> 63;
    }
    close(fd);
    return n;
}

static void *handler(void *unused)
{
    (void)unused;
    for (;;) {
        struct uffd_msg m;
        ssize_t r = read(uffd, &m, sizeof m);
        if (r != sizeof m) {
            if (r < 0 && errno == EINTR)
                continue;
            die(prog, "read uffd");
        }
        if (m.event != UFFD_EVENT_PAGEFAULT)
            continue;
        uint64_t at = m.arg.pagefault.address & ~(uint64_t)(granule - 1);
        struct uffdio_copy c = {
            .dst = at, .src = (uint64_t)(uintptr_t)(src + (at - (uintptr_t)base)), .len = granule};
        if (ioctl(uffd, UFFDIO_COPY, &c) && errno != EEXIST)
            die(prog, "UFFDIO_COPY");
    }
    return NULL;
}

static void *worker(void *arg)
{
    size_t t = (size_t)arg, from = ngran * t / nthreads, to = ngran * (t + 1) / nthreads, wrong = 0;
    pthread_barrier_wait(&start);
    for (size_t i = from; i < to; i++) {
        size_t pg = order[i] * (granule / PAGE) + page_in[i];
        const volatile uint8_t *p = base + pg * PAGE + (i * 577) % PAGE;
        uint64_t a = now_ns();
        uint8_t v = *p;
        lat[i] = (uint32_t)(now_ns() - a);
        wrong += v != fill_byte(pg);
    }
    __atomic_fetch_add(&bad, wrong, __ATOMIC_RELAXED);
    return NULL;
}


int main(int argc, char **argv)
{
    if (argc != 6 || (strcmp(argv[1], "raw") && strcmp(argv[1], "holo"))) {
        fprintf(stderr, "usage: threads_fault raw|holo SIZE GRANULE THREADS SEED\n");
        return 2;
    }
    int raw = !strcmp(argv[1], "raw");
    size = strtoull(argv[2], NULL, 0);
    granule = strtoull(argv[3], NULL, 0);
    nthreads = strtoull(argv[4], NULL, 0);
    uint64_t rng = strtoull(argv[5], NULL, 0) | 1;
    if (granule < PAGE || (granule & (granule - 1)) || !size || size % granule || !nthreads || nthreads > 256) {
        fprintf(stderr, "threads_fault: bad arguments\n");
        return 2;
    }
    ngran = size / granule;
    order = malloc(ngran * sizeof *order);
    page_in = malloc(ngran * sizeof *page_in);
    lat = malloc(ngran * sizeof *lat);
    if (!order || !page_in || !lat)
        die(prog, "malloc");
    for (size_t i = 0; i < ngran; i++)
        order[i] = i;
    for (size_t i = 0; i < ngran; i++) { /* Fisher-Yates */
        size_t j = i + xorshift(&rng) % (ngran - i), t = order[i];
        order[i] = order[j];
        order[j] = t;
        page_in[i] = xorshift(&rng) % (granule / PAGE);
    }

    size_t faults;
    if (raw) {
        src = map(size);
        fill(src);
        /* Warm pages for COPY, as in raw_uffd.c (freshly handed back guest memory is dearer). */
        uint8_t *warm = map(size);
        memset(warm, 1, size);
        munmap(warm, size);
        uint8_t *m = map(size + granule);
        base = (uint8_t *)(((uintptr_t)m + granule - 1) & ~(uintptr_t)(granule - 1));
        madvise(base, size, MADV_NOHUGEPAGE);
        uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
        struct uffdio_api api = {.api = UFFD_API};
        if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api))
            die(prog, "userfaultfd");
        struct uffdio_register reg = {.range = {.start = (uintptr_t)base, .len = size},
                                      .mode = UFFDIO_REGISTER_MODE_MISSING};
        if (ioctl(uffd, UFFDIO_REGISTER, &reg))
            die(prog, "UFFDIO_REGISTER");
        pthread_t h;
        if (pthread_create(&h, NULL, handler, NULL))
            die(prog, "pthread_create");
        faults = ngran;
    } else {
        uint8_t *m = malloc(size + granule);
        if (!m)
            die(prog, "malloc");
        base = (uint8_t *)(((uintptr_t)m + granule - 1) & ~(uintptr_t)(granule - 1));
        fill(base);
        /* The daemon evicts asynchronously: wait until the count stops moving. */
        size_t now = present_targets(), last;
        for (int still = 0, tries = 0; still < 3 && tries < 200; tries++) {
            usleep(20000);
            last = now;
            now = present_targets();
            still = now == last ? still + 1 : 0;
        }
        faults = ngran - now;
    }

    pthread_t t[256];
    if (pthread_barrier_init(&start, NULL, (unsigned)nthreads + 1))
        die(prog, "pthread_barrier_init");
    for (size_t i = 0; i < nthreads; i++)
        if (pthread_create(&t[i], NULL, worker, (void *)i))
            die(prog, "pthread_create");
    pthread_barrier_wait(&start);
    uint64_t t0 = now_ns();
    for (size_t i = 0; i < nthreads; i++)
        pthread_join(t[i], NULL);
    uint64_t ns = now_ns() - t0;
    if (bad) {
        fprintf(stderr, "threads_fault: %zu of %zu reads returned WRONG DATA\n", bad, ngran);
        return 1;
    }
    qsort(lat, ngran, sizeof *lat, cmp_u32);
    printf("{\"threads\":%zu,\"accesses\":%zu,\"faults\":%zu,\"ns\":%llu,\"p50_ns\":%u,\"p90_ns\":%u,"
           "\"p99_ns\":%u,\"max_ns\":%u",
           nthreads, ngran, faults, (unsigned long long)ns, pct(lat, ngran, 0.5), pct(lat, ngran, 0.9),
           pct(lat, ngran, 0.99), lat[ngran - 1]);
    print_hist(lat, ngran);
    printf("}\n");
    return 0;
}
