/* fresh_floor: what bringing a file's bytes into *fresh* anonymous memory costs, against
 * reading them into one reused buffer. A pager must allocate every page it fills (and the
 * program's zap frees it again), so on a machine where page allocation is slow (a VM whose
 * free pages the host reclaims) the raw disk bandwidth is not the floor of a sequential
 * refault scan. Modes, each over the whole FILE in CHUNK-byte O_DIRECT reads at QD1:
 *   reused: every read into one buffer (the raw disk floor, as disk_floor.c);
 *   fresh:  each read into the next CHUNK of a 256 MiB ring, DONTNEED'd first, so the
 *           read's pages are allocated by the kernel as it pins them;
 *   alloc:  the same ring, DONTNEED then memset, no read (page allocation alone).
 * Rounds alternate the modes; prints each round, then the median MB/s per mode.
 * Usage: fresh_floor FILE CHUNK ROUNDS     (FILE: at least 256 MiB, not in the page cache) */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { REUSED, FRESH, ALLOC, MODES };
static const char *names[MODES] = {"reused", "fresh", "alloc"};
#define RING (256UL << 20)

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pass(int fd, size_t total, size_t chunk, int mode, char *buf, char *ring) {
    double t0 = now();
    for (size_t off = 0; off + chunk <= total; off += chunk) {
        char *dst = mode == REUSED ? buf : ring + off % RING;
        if (mode != REUSED && madvise(dst, chunk, MADV_DONTNEED) != 0) {
            perror("madvise");
            exit(1);
        }
        if (mode == ALLOC) {
            memset(dst, (int)off, chunk);
        } else if (pread(fd, dst, chunk, (off_t)off) != (ssize_t)chunk) {
            perror("pread");
            exit(1);
        }
    }
    return total / (now() - t0) / 1e6;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: fresh_floor FILE CHUNK ROUNDS\n");
        return 2;
    }
    size_t chunk = strtoul(argv[2], NULL, 0);
    int rounds = atoi(argv[3]);
    int fd = open(argv[1], O_RDONLY | O_DIRECT);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        perror(argv[1]);
        return 1;
    }
    size_t total = (size_t)st.st_size / chunk * chunk;
    if (chunk < 4096 || chunk % 4096 || RING % chunk || total < RING || rounds < 1 || rounds > 64) {
        fprintf(stderr, "fresh_floor: CHUNK must be a multiple of 4096 dividing 256 MiB, FILE at least 256 MiB, ROUNDS 1..64\n");
        return 2;
    }
    char *buf = aligned_alloc(4096, chunk);
    char *ring = mmap(NULL, RING, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (!buf || ring == MAP_FAILED) {
        perror("alloc");
        return 1;
    }
    double mbs[MODES][64];
    for (int r = 0; r < rounds; r++) {
        for (int m = 0; m < MODES; m++) {
            mbs[m][r] = pass(fd, total, chunk, m, buf, ring);
            printf("round %d %-6s %6.0f MB/s\n", r + 1, names[m], mbs[m][r]);
        }
    }
    for (int m = 0; m < MODES; m++) {
        qsort(mbs[m], rounds, sizeof(double), cmp);
        printf("median %-6s %6.0f MB/s (%zu-byte chunks, %d rounds)\n", names[m], mbs[m][rounds / 2], chunk, rounds);
    }
    return 0;
}
