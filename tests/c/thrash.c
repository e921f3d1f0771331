/* thrash FILE SIZE
 *
 * Memory thrashing for the pressure tests (run without the shim, in a memory cgroup smaller
 * than SIZE): writes FILE (SIZE bytes), maps it, prints `ready`, then reads random pages of it
 * until a line arrives on stdin. Its working set does not fit the cgroup, so each read is
 * likely a refault of a page the cgroup's reclaim just evicted: the kernel counts that as a
 * memory stall, and system PSI "some" rises. Prints `thrash: N reads` and exits.
 * Exit: 0 ok, 2 usage, 3 system error. */
#include "common.h"
#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>

static const char *prog = "thrash";

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s FILE SIZE[K|M|G]\n", prog);
        return 2;
    }
    size_t size = parse_size(argv[2]);
    if (size == 0 || size % PAGE) {
        fprintf(stderr, "%s: SIZE must be a non-zero multiple of 4K\n", prog);
        return 2;
    }
    int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        fail_sys(prog, "open");
    static unsigned char block[1 << 20];
    for (size_t off = 0; off < size; off += sizeof block) {
        memset(block, (int)(off >> 20) | 1, sizeof block);
        size_t n = size - off < sizeof block ? size - off : sizeof block;
        if (write(fd, block, n) != (ssize_t)n)
            fail_sys(prog, "write");
    }
    if (fsync(fd) != 0)
        fail_sys(prog, "fsync");
    volatile unsigned char *map = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED)
        fail_sys(prog, "mmap");
    /* One page per fault (no read-around): more refaults, less I/O. */
    if (madvise((void *)map, size, MADV_RANDOM) != 0)
        fail_sys(prog, "madvise");
    printf("ready\n");
    fflush(stdout);
    struct pollfd in = { .fd = 0, .events = POLLIN };
    uint64_t reads = 0, x = 1;
    unsigned sum = 0;
    for (;;) {
        for (int i = 0; i < 64; i++) {
            x = splitmix64(x);
            sum += map[(x % (size / PAGE)) * PAGE];
            reads++;
        }
        if (poll(&in, 1, 0) > 0)
            break;
    }
    printf("thrash: %" PRIu64 " reads (%u)\n", reads, sum & 1);
    return 0;
}
