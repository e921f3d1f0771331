/* The floor of `holo-bench refault`: the cheapest possible fault service, from memory.
 *
 * Registers a SIZE anonymous region with a raw userfaultfd (MISSING mode). One handler thread
 * reads faults (blocking read) and resolves each with one UFFDIO_COPY of the whole
 * granule-aligned GRANULE around it from a prefilled source buffer. The main thread runs the
 * timed pass of access.h; every access is to a never-touched granule, so every one faults.
 * Arguments: see access.h. */
#include "access.h"

#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>

static const char *prog = "raw_uffd";
static struct args a;
static int uffd;
static uint8_t *dst, *src;

static void *handler(void *unused)
{
    (void)unused;
    pin_self(prog, a.handler_cpu);
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
        uint64_t at = m.arg.pagefault.address & ~(uint64_t)(a.granule - 1);
        struct uffdio_copy c = {
            .dst = at,
            .src = (uint64_t)(uintptr_t)(src + (at - (uintptr_t)dst)),
            .len = a.granule,
        };
        if (ioctl(uffd, UFFDIO_COPY, &c) && errno != EEXIST)
            die(prog, "UFFDIO_COPY");
    }
    return NULL;
}

static void *map(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        die(prog, "mmap");
    return p;
}

int main(int argc, char **argv)
{
    a = parse_args(prog, argc, argv);
    int pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (pagemap < 0)
        die(prog, "open /proc/self/pagemap");

    src = map(a.size);
    fill(src, a.size);
    /* The guest may have handed free memory back to the host, which makes first touches
     * ~10x dearer (KERNEL-NOTES); cycle SIZE through the allocator so COPY gets warm pages,
     * as holo's refaults do (they reuse the pages its evictions just freed). */
    uint8_t *warm = map(a.size);
    memset(warm, 1, a.size);
    munmap(warm, a.size);

    uint8_t *m = map(a.size + a.granule);
    dst = (uint8_t *)(((uintptr_t)m + a.granule - 1) & ~(uintptr_t)(a.granule - 1));
    madvise(dst, a.size, MADV_NOHUGEPAGE); /* fault granule by granule, never by THP */

    uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
    if (uffd < 0)
        die(prog, "userfaultfd");
    struct uffdio_api api = { .api = UFFD_API };
    if (ioctl(uffd, UFFDIO_API, &api))
        die(prog, "UFFDIO_API");
    struct uffdio_register reg = {
        .range = { .start = (uintptr_t)dst, .len = a.size },
        .mode = UFFDIO_REGISTER_MODE_MISSING,
    };
    if (ioctl(uffd, UFFDIO_REGISTER, &reg))
        die(prog, "UFFDIO_REGISTER");
    pthread_t t;
    if (pthread_create(&t, NULL, handler, NULL))
        die(prog, "pthread_create");

    timed_pass(prog, &a, dst, pagemap, "", 0);
    /* exit() ends the handler thread, still blocked in read(). */
    return 0;
}
