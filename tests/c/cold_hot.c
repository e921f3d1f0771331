/* cold_hot SIZE HOT
 *
 * Fills SIZE bytes with a known pattern and prints `ready`. Then a thread reads the last HOT
 * bytes (the hot set) over and over: each pass sums every word, every 16th pass verifies the
 * pattern. The rest is never touched again (the cold part). The hot set ends the buffer, so
 * that read-ahead along the loop finds nothing of the cold part past it (it would bring cold
 * granules back with every refault of the hot set). Commands on stdin, one a line:
 *   stats  print `passes N seconds S`: hot passes since `ready`, and the time they took;
 *   check  stop the hot loop, verify all SIZE bytes, print `ok passes N seconds S`, exit.
 * With holo offloading cold memory, the cold part is read back from the tiers by `check`.
 * Exit: 0 ok, 1 data mismatch, 2 usage, 3 system error. */
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "common.h"

static const char *prog = "cold_hot";
static const uint64_t seed = 0xc01d;

static unsigned char *buf;
static size_t hot, hot_at; /* the hot set: HOT bytes at offset SIZE - HOT */
static atomic_bool stop;
static atomic_ulong passes;
static volatile uint64_t sink;

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void *hot_loop(void *arg)
{
    (void)arg;
    const volatile uint64_t *w = (const volatile uint64_t *)(buf + hot_at);
    while (!atomic_load(&stop)) {
        unsigned long n = atomic_load(&passes);
        if (n % 16 == 0) {
            verify_or_die(prog, "hot set", buf, hot_at, hot, seed);
        } else {
            uint64_t sum = 0;
            for (size_t i = 0; i < hot / 8; i++)
                sum += w[i];
            sink = sum;
        }
        atomic_store(&passes, n + 1);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s SIZE[K|M|G] HOT[K|M|G]\n", prog);
        return 2;
    }
    size_t size = parse_size(argv[1]);
    hot = parse_size(argv[2]);
    if (size == 0 || size % 8 || hot == 0 || hot % 8 || hot > size) {
        fprintf(stderr, "%s: SIZE must be a non-zero multiple of 8, HOT one no larger\n", prog);
        return 2;
    }
    hot_at = size - hot;
    buf = alloc_filled(prog, size, seed);
    double t0 = now_s();
    pthread_t t;
    if ((errno = pthread_create(&t, NULL, hot_loop, NULL)) != 0)
        fail_sys(prog, "pthread_create");
    printf("ready\n");
    fflush(stdout);

    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (strcmp(line, "stats\n") == 0) {
            printf("passes %lu seconds %.3f\n", atomic_load(&passes), now_s() - t0);
            fflush(stdout);
        } else if (strcmp(line, "check\n") == 0) {
            atomic_store(&stop, 1);
            pthread_join(t, NULL);
            double secs = now_s() - t0;
            verify_or_die(prog, "everything", buf, 0, size, seed);
            printf("ok passes %lu seconds %.3f\n", atomic_load(&passes), secs);
            return 0;
        } else {
            fprintf(stderr, "%s: unknown command %s", prog, line);
            return 2;
        }
    }
    fprintf(stderr, "%s: stdin closed before `check`\n", prog);
    return 2;
}
