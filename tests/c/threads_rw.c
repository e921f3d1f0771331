/* threads_rw SIZE THREADS OPS
 *
 * One big malloc(SIZE) shared by THREADS threads. Page i belongs to thread
 * i % THREADS; only its owner writes it, so the owner always knows what the
 * page must hold: a pattern of (page, generation), where the generation is
 * bumped on every write. All threads start together (barrier) so their faults
 * on the region race in the daemon. Phases:
 *   1. each thread writes all its pages (generation 1): the region overflows
 *      the budget, so later phases refault;
 *   2. OPS random operations per thread on its own pages: write the page with
 *      the next generation, or read it and check the current one;
 *   3. after a barrier, each thread verifies the pages of the *next* thread, so
 *      every page is checked once, by a thread that did not write it.
 * Exit: 0 ok, 1 data mismatch, 2 usage, 3 system error. */
#include "common.h"
#include <pthread.h>

static const char *prog = "threads_rw";

static unsigned char *region;
static size_t npages;
static unsigned nthreads;
static long nops;
static uint32_t *generation; /* per page; written only by the page's owner */
static pthread_barrier_t barrier;

static inline uint64_t page_seed(size_t page, uint32_t gen)
{
    return splitmix64(((uint64_t)page << 32) | gen);
}

static void write_page(size_t page, uint32_t gen)
{
    uint64_t *w = (uint64_t *)(region + page * PAGE), s = page_seed(page, gen);
    for (size_t i = 0; i < WORDS_PER_PAGE; i++)
        w[i] = splitmix64(s + i);
}

static void check_page(size_t page, uint32_t gen, unsigned tid, const char *phase)
{
    const volatile uint64_t *w = (const uint64_t *)(region + page * PAGE);
    uint64_t s = page_seed(page, gen);
    for (size_t i = 0; i < WORDS_PER_PAGE; i++) {
        uint64_t want = splitmix64(s + i), got = w[i];
        if (got != want) {
            char what[96];
            snprintf(what, sizeof what, "%s, thread %u, page generation %" PRIu32, phase, tid, gen);
            mismatch(prog, what, region, page * PAGE + i * 8, want, got);
        }
    }
}

static void *worker(void *arg)
{
    unsigned tid = (unsigned)(uintptr_t)arg;
    size_t mine = (npages - tid + nthreads - 1) / nthreads; /* pages tid, tid+T, ... */
    uint64_t rng = splitmix64(0x7157 + tid);

    pthread_barrier_wait(&barrier);
    for (size_t k = 0; k < mine; k++) {
        size_t page = tid + k * nthreads;
        generation[page] = 1;
        write_page(page, 1);
    }

    pthread_barrier_wait(&barrier);
    for (long op = 0; op < nops && mine > 0; op++) {
        rng = splitmix64(rng);
        size_t page = tid + (rng >> 1) % mine * nthreads;
        if (rng & 1)
            write_page(page, ++generation[page]);
        else
            check_page(page, generation[page], tid, "random read");
    }

    /* Every thread's writes are done before anyone checks a foreign stripe. */
    pthread_barrier_wait(&barrier);
    unsigned other = (tid + 1) % nthreads;
    for (size_t page = other; page < npages; page += nthreads)
        check_page(page, generation[page], tid, "final verify");
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s SIZE[K|M|G] THREADS OPS\n", prog);
        return 2;
    }
    size_t size = parse_size(argv[1]);
    long t = strtol(argv[2], NULL, 10);
    nops = strtol(argv[3], NULL, 10);
    if (size < PAGE || size % PAGE || t < 1 || t > 1024 || nops < 0) {
        fprintf(stderr, "%s: SIZE must be a multiple of 4K, 1 <= THREADS <= 1024, OPS >= 0\n", prog);
        return 2;
    }
    nthreads = (unsigned)t;
    npages = size / PAGE;

    region = malloc(size);
    generation = calloc(npages, sizeof *generation);
    if (!region || !generation)
        fail_sys(prog, "malloc");
    pthread_barrier_init(&barrier, NULL, nthreads);

    pthread_t th[1024];
    for (unsigned i = 0; i < nthreads; i++) {
        errno = pthread_create(&th[i], NULL, worker, (void *)(uintptr_t)i);
        if (errno)
            fail_sys(prog, "pthread_create");
    }
    for (unsigned i = 0; i < nthreads; i++)
        pthread_join(th[i], NULL);

    printf("%s: %u threads, %ld ops each, verified %zu pages\n", prog, nthreads, nops, npages);
    return 0;
}
