/* A shared region's reader and writer, driven line by line on stdin:
 *
 *   shared_rw NAME SIZE            attach NAME (SIZE bytes) with holo_attach, print
 *                                  "attached", then obey commands:
 *   w BYTE     fill the whole region with BYTE (hex), print "wrote"
 *   h BYTE     fill the first half only (a writer about to be killed mid-write), "wrote half"
 *   s          holo_sync, print "synced" (or "sync failed: ...")
 *   r          read the whole region: "read XX" if every byte is XX, else
 *              "mixed XX at 0 YY at OFFSET"
 *   q          exit 0
 *
 * With HOLO_SHARE=NAME:SIZE the shim attached the region at start; holo_attach then returns
 * that same mapping, and the program prints "same mapping" when it is the one it got first.
 * A failed attach prints "attach failed: ERRNO" and exits 3. */
#include "common.h"
#include <holo.h>

/* Found in libholo.so at run time (LD_PRELOAD); the program is not linked against it. */
#pragma weak holo_attach
#pragma weak holo_sync

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s NAME SIZE\n", argv[0]);
        return 2;
    }
    size_t size = parse_size(argv[2]);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!holo_attach || !holo_sync) {
        printf("attach failed: not under libholo.so\n");
        return 3;
    }
    unsigned char *p = holo_attach(argv[1], size);
    if (!p) {
        printf("attach failed: %d\n", errno);
        return 3;
    }
    if (holo_attach(argv[1], size) == p)
        printf("same mapping\n");
    printf("attached\n");
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        unsigned b = 0;
        switch (line[0]) {
        case 'w':
        case 'h':
            if (sscanf(line + 1, "%x", &b) != 1)
                return 2;
            memset(p, (int)b, line[0] == 'w' ? size : size / 2);
            printf(line[0] == 'w' ? "wrote\n" : "wrote half\n");
            break;
        case 's':
            if (holo_sync(p) == 0)
                printf("synced\n");
            else
                printf("sync failed: %d\n", errno);
            break;
        case 'r': {
            size_t i = 1;
            while (i < size && p[i] == p[0])
                i++;
            if (i == size)
                printf("read %02x\n", p[0]);
            else
                printf("mixed %02x at 0 %02x at %zu\n", p[0], p[i], i);
            break;
        }
        case 'q':
            return 0;
        default:
            return 2;
        }
    }
    return 0;
}
