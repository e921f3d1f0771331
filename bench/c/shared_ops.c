/* shared_ops NAME GRANULES GRANULE_BYTES: one program of `holo-bench shared`, run under
 * libholo.so. It attaches shared region NAME (GRANULES granules of GRANULE_BYTES), prints
 * "attached", then obeys one command per line on stdin, answering one line each, every time
 * taken around the operation alone (CLOCK_MONOTONIC, ns):
 *
 *   t COUNT V      read the first byte of granules 0..COUNT, each read timed (a first touch:
 *                  a read fault from the home): "t NS NS ..."; "bad G X" if a byte is not V
 *   w FIRST N V    fill granules FIRST..FIRST+N with byte V (write faults: write leases): "w NS"
 *   s              holo_sync: "s NS", or "sync failed: ERRNO"
 *   r G V          read one byte of granule G: "r NS", or "bad G X" if it is not V
 *   a NAME BYTES   holo_attach another region NAME (a new one: one Raft commit): "a NS"
 *   q              exit 0
 *
 * V is a byte in hex. A failed attach prints "attach failed: ERRNO" and exits 3. */
#include "bench.h"
#include "../../libholo-preload/include/holo.h"

/* Found in libholo.so at run time (LD_PRELOAD); the program is not linked against it. */
#pragma weak holo_attach
#pragma weak holo_sync

static volatile unsigned char sink;

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s NAME GRANULES GRANULE_BYTES\n", argv[0]);
        return 2;
    }
    size_t granules = strtoull(argv[2], NULL, 10), gb = strtoull(argv[3], NULL, 10);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!holo_attach || !holo_sync) {
        printf("attach failed: not under libholo.so\n");
        return 3;
    }
    unsigned char *p = granules && gb ? holo_attach(argv[1], granules * gb) : NULL;
    if (!p) {
        printf("attach failed: %d\n", errno);
        return 3;
    }
    printf("attached\n");
    char line[256], name[128];
    while (fgets(line, sizeof line, stdin)) {
        size_t first, n;
        unsigned v;
        uint64_t t;
        switch (line[0]) {
        case 't':
            if (sscanf(line + 1, "%zu %x", &n, &v) != 2 || n > granules)
                return 2;
            printf("t");
            for (size_t g = 0; g < n; g++) {
                t = now_ns();
                unsigned char b = p[g * gb];
                t = now_ns() - t;
                if (b != v) {
                    printf(" bad %zu %02x\n", g, b); /* on the answer line: the reader refuses it whole */
                    goto next;
                }
                printf(" %llu", (unsigned long long)t);
            }
            printf("\n");
            break;
        case 'w':
            if (sscanf(line + 1, "%zu %zu %x", &first, &n, &v) != 3 || first + n > granules)
                return 2;
            t = now_ns();
            memset(p + first * gb, (int)v, n * gb);
            printf("w %llu\n", (unsigned long long)(now_ns() - t));
            break;
        case 's':
            t = now_ns();
            if (holo_sync(p) == 0)
                printf("s %llu\n", (unsigned long long)(now_ns() - t));
            else
                printf("sync failed: %d\n", errno);
            break;
        case 'r':
            if (sscanf(line + 1, "%zu %x", &first, &v) != 2 || first >= granules)
                return 2;
            t = now_ns();
            sink = p[first * gb];
            t = now_ns() - t;
            if (sink != v)
                printf("bad %zu %02x\n", first, sink);
            else
                printf("r %llu\n", (unsigned long long)t);
            break;
        case 'a':
            if (sscanf(line + 1, "%127s %zu", name, &n) != 2)
                return 2;
            t = now_ns();
            if (!holo_attach(name, n)) {
                printf("attach failed: %d\n", errno);
                return 3;
            }
            printf("a %llu\n", (unsigned long long)(now_ns() - t));
            break;
        case 'q':
            return 0;
        default:
            return 2;
        }
    next:;
    }
    return 0;
}
