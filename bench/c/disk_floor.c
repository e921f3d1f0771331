/* The physical floor of `holo-bench swap`: O_DIRECT reads of a file on the disk that holds
 * the swapfile and holo's spill file, bypassing the page cache.
 *
 * Usage: disk_floor create FILE SIZE       write SIZE bytes of random data (1 MiB O_DIRECT writes)
 *        disk_floor read FILE SEED OPS THREADS
 * `read` prints one JSON line per test:
 *   seq_1m_qd1        one sequential pass over the file, 1 MiB reads, one at a time
 *   seq_1m_qdN        the same split over THREADS threads (N reads in flight)
 *   rand_4k_qd1       OPS random 4 KiB reads, one at a time (latency per read)
 *   rand_64k_qd1      OPS/4 random 64 KiB reads (holo's default granule)
 * Real data is written because reading never-written (fallocated) blocks costs no disk I/O. */
#define _GNU_SOURCE
#include "bench.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char *prog = "disk_floor";

#define MIB (1UL << 20)

static void *aligned(size_t n)
{
    void *p;
    if (posix_memalign(&p, 4096, n))
        die(prog, "posix_memalign");
    return p;
}


static void report(const char *test, size_t bytes, size_t ops, uint64_t ns, uint32_t *lat)
{
    printf("{\"test\":\"%s\",\"bytes\":%zu,\"ops\":%zu,\"ns\":%llu", test, bytes, ops, (unsigned long long)ns);
    if (lat) {
        qsort(lat, ops, sizeof *lat, cmp_u32);
        printf(",\"p50_ns\":%u,\"p90_ns\":%u,\"p99_ns\":%u,\"max_ns\":%u", pct(lat, ops, 0.5),
               pct(lat, ops, 0.9), pct(lat, ops, 0.99), lat[ops - 1]);
        print_hist(lat, ops);
    }
    printf("}\n");
    fflush(stdout);
}

struct seq {
    int fd;
    size_t first, step, nblocks;
};

/* Reads blocks first, first + step, ... of the file. */
static void *seq_reader(void *arg)
{
    struct seq *s = arg;
    uint8_t *buf = aligned(MIB);
    for (size_t b = s->first; b < s->nblocks; b += s->step)
        if (pread(s->fd, buf, MIB, (off_t)(b * MIB)) != (ssize_t)MIB)
            die(prog, "pread 1 MiB");
    free(buf);
    return NULL;
}

static void seq(int fd, size_t size, size_t threads)
{
    pthread_t t[64];
    struct seq s[64];
    uint64_t t0 = now_ns();
    for (size_t i = 0; i < threads; i++) {
        s[i] = (struct seq){fd, i, threads, size / MIB};
        if (pthread_create(&t[i], NULL, seq_reader, &s[i]))
            die(prog, "pthread_create");
    }
    for (size_t i = 0; i < threads; i++)
        pthread_join(t[i], NULL);
    char name[32];
    snprintf(name, sizeof name, "seq_1m_qd%zu", threads);
    report(name, size / MIB * MIB, size / MIB, now_ns() - t0, NULL);
}

static void rand_reads(int fd, size_t size, size_t bs, size_t ops, uint64_t *rng, const char *name)
{
    uint8_t *buf = aligned(bs);
    uint32_t *lat = malloc(ops * sizeof *lat);
    if (!lat)
        die(prog, "malloc");
    uint64_t t0 = now_ns();
    for (size_t i = 0; i < ops; i++) {
        off_t off = (off_t)(xorshift(rng) % (size / bs) * bs);
        uint64_t a = now_ns();
        if (pread(fd, buf, bs, off) != (ssize_t)bs)
            die(prog, "pread");
        lat[i] = (uint32_t)(now_ns() - a);
    }
    report(name, ops * bs, ops, now_ns() - t0, lat);
    free(lat);
    free(buf);
}

int main(int argc, char **argv)
{
    if (argc == 4 && !strcmp(argv[1], "create")) {
        size_t size = strtoull(argv[3], NULL, 0) / MIB * MIB;
        int fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC | O_DIRECT | O_CLOEXEC, 0600);
        if (fd < 0)
            die(prog, "open");
        uint64_t *buf = aligned(MIB), rng = 0x9e3779b97f4a7c15ull;
        for (size_t off = 0; off < size; off += MIB) {
            for (size_t w = 0; w < MIB / 8; w++)
                buf[w] = xorshift(&rng);
            if (pwrite(fd, buf, MIB, (off_t)off) != (ssize_t)MIB)
                die(prog, "pwrite");
        }
        if (fsync(fd) || close(fd))
            die(prog, "fsync");
        return 0;
    }
    if (argc != 6 || strcmp(argv[1], "read")) {
        fprintf(stderr, "usage: disk_floor create FILE SIZE | disk_floor read FILE SEED OPS THREADS\n");
        return 2;
    }
    int fd = open(argv[2], O_RDONLY | O_DIRECT | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st))
        die(prog, "open");
    uint64_t rng = strtoull(argv[3], NULL, 0) | 1;
    size_t ops = strtoull(argv[4], NULL, 0), threads = strtoull(argv[5], NULL, 0);
    size_t size = (size_t)st.st_size;
    if (!ops || !threads || threads > 64 || size < MIB) {
        fprintf(stderr, "disk_floor: bad arguments\n");
        return 2;
    }
    seq(fd, size, 1);
    if (threads > 1)
        seq(fd, size, threads);
    rand_reads(fd, size, 4096, ops, &rng, "rand_4k_qd1");
    rand_reads(fd, size, 65536, ops / 4 ? ops / 4 : 1, &rng, "rand_64k_qd1");
    return 0;
}
