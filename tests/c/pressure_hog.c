/* pressure_hog SIZE STEP_MS
 *
 * A memory hog for the pressure tests (run without the shim): takes SIZE bytes in 16M steps,
 * filling each, one step every STEP_MS milliseconds (so that a controller polling the
 * cgroup sees it grow), prints `ready`, holds everything until a line arrives on stdin,
 * then verifies it and prints `pressure_hog: verified`.
 * Exit: 0 ok, 1 data mismatch, 2 usage, 3 system error. */
#include "common.h"
#include <time.h>

static const char *prog = "pressure_hog";

#define STEP (16UL << 20)

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s SIZE[K|M|G] STEP_MS\n", prog);
        return 2;
    }
    size_t size = parse_size(argv[1]);
    long step_ms = strtol(argv[2], NULL, 10);
    if (size == 0 || size % STEP || step_ms < 0) {
        fprintf(stderr, "%s: SIZE must be a non-zero multiple of 16M, STEP_MS >= 0\n", prog);
        return 2;
    }
    unsigned char *buf = malloc(size);
    if (!buf)
        fail_sys(prog, "malloc");
    struct timespec pause = { step_ms / 1000, (step_ms % 1000) * 1000000L };
    for (size_t off = 0; off < size; off += STEP) {
        fill_words(buf + off, STEP, 0x406, off / 8);
        nanosleep(&pause, NULL);
    }
    printf("ready\n");
    fflush(stdout);
    char line[256];
    if (!fgets(line, sizeof line, stdin))
        fprintf(stderr, "%s: stdin closed before a line arrived; verifying anyway\n", prog);
    verify_or_die(prog, "after the hold", buf, 0, size, 0x406);
    printf("%s: verified %zu bytes\n", prog, size);
    return 0;
}
