/* pressure_workload SIZE STEP_MS PASSES
 *
 * One side of `holo-bench pressure`: takes SIZE bytes in 16 MiB steps, writing each (a
 * position-dependent pattern), one step every STEP_MS milliseconds, then reads the whole of it
 * PASSES times, verifying every word, and prints one JSON line with its time. The benchmark
 * runs two of these in one memory cgroup: the managed program (under holo, or not) and a hog.
 * Exit: 0 ok, 1 data mismatch, 2 usage, 3 system error. */
#include "bench.h"

static const char *prog = "pressure_workload";

#define STEP (16UL << 20)

static inline uint64_t word(size_t i)
{
    return (uint64_t)i * 0x9E3779B97F4A7C15ull ^ 0x5eed;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s SIZE_BYTES STEP_MS PASSES\n", prog);
        return 2;
    }
    size_t size = strtoull(argv[1], NULL, 10);
    long step_ms = strtol(argv[2], NULL, 10);
    long passes = strtol(argv[3], NULL, 10);
    if (size == 0 || size % STEP || step_ms < 0 || passes < 1) {
        fprintf(stderr, "%s: SIZE must be a non-zero multiple of 16 MiB, STEP_MS >= 0, PASSES >= 1\n", prog);
        return 2;
    }
    uint64_t t0 = now_ns();
    uint64_t *buf = malloc(size);
    if (!buf)
        die(prog, "malloc");
    struct timespec pause = { step_ms / 1000, (step_ms % 1000) * 1000000L };
    size_t words = size / 8, per_step = STEP / 8;
    for (size_t s = 0; s < words; s += per_step) {
        for (size_t i = s; i < s + per_step; i++)
            buf[i] = word(i);
        nanosleep(&pause, NULL);
    }
    uint64_t filled = now_ns();
    for (long p = 0; p < passes; p++)
        for (size_t i = 0; i < words; i++)
            if (buf[i] != word(i)) {
                fprintf(stderr, "%s: VERIFICATION FAILED at byte %zu: %#llx\n", prog, i * 8,
                        (unsigned long long)buf[i]);
                return 1;
            }
    uint64_t done = now_ns();
    printf("{\"fill_ns\": %llu, \"verify_ns\": %llu, \"ns\": %llu}\n", (unsigned long long)(filled - t0),
           (unsigned long long)(done - filled), (unsigned long long)(done - t0));
    return 0;
}
