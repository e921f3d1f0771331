/* hot_reread SIZE HOT
 *
 * Fills SIZE bytes, prints `ready`, then follows commands on stdin, one a line:
 *   hot           verify the first HOT bytes (the hot subset) and print `hot ok`;
 *   scan OFF LEN  verify LEN bytes from offset OFF and print `scan ok`;
 *   resident      print `resident N`: how many pages of the hot subset are in memory
 *                 (present in /proc/self/pagemap), without touching them;
 *   check         verify all SIZE bytes, print `ok` and exit.
 * With SIZE and HOT above holo's DRAM budget, each `hot` reads the hot subset back from the
 * tiers below DRAM: the placement tests drive promotions with it.
 * Exit: 0 ok, 1 data mismatch, 2 usage, 3 system error. */
#include "common.h"
#include <fcntl.h>

static const char *prog = "hot_reread";

/* Pages of [p, p + len) present in memory: the range's pagemap entries in one pread. */
static size_t present_pages(const unsigned char *p, size_t len)
{
    if (len == 0)
        return 0;
    int fd = open("/proc/self/pagemap", O_RDONLY);
    if (fd < 0)
        fail_sys(prog, "open /proc/self/pagemap");
    uintptr_t first = (uintptr_t)p / PAGE, last = ((uintptr_t)p + len - 1) / PAGE;
    size_t pages = last - first + 1;
    uint64_t *entries = malloc(pages * 8);
    if (!entries)
        fail_sys(prog, "malloc pagemap entries");
    /* One pread covers the range; a short read (allowed by read(2)) goes on for the rest. */
    size_t got = 0;
    while (got < pages * 8) {
        ssize_t r = pread(fd, (char *)entries + got, pages * 8 - got, (off_t)(first * 8 + got));
        if (r <= 0)
            fail_sys(prog, "pread /proc/self/pagemap");
        got += (size_t)r;
    }
    size_t n = 0;
    for (size_t i = 0; i < pages; i++)
        n += entries[i] >> 63;
    free(entries);
    close(fd);
    return n;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s SIZE[K|M|G] HOT[K|M|G]\n", prog);
        return 2;
    }
    size_t size = parse_size(argv[1]), hot = parse_size(argv[2]);
    if (size == 0 || size % 8 || hot % 8 || hot > size) {
        fprintf(stderr, "%s: SIZE must be a non-zero multiple of 8, HOT one no larger\n", prog);
        return 2;
    }
    unsigned char *buf = alloc_filled(prog, size, 0x407);
    printf("ready\n");
    fflush(stdout);

    char line[64], off_arg[24], len_arg[24];
    while (fgets(line, sizeof line, stdin)) {
        if (strcmp(line, "hot\n") == 0) {
            verify_or_die(prog, "hot subset", buf, 0, hot, 0x407);
            printf("hot ok\n");
            fflush(stdout);
        } else if (sscanf(line, "scan %23s %23s", off_arg, len_arg) == 2) {
            size_t off = parse_size(off_arg), len = parse_size(len_arg);
            if (off % 8 || len % 8 || off > size || len > size - off) {
                fprintf(stderr, "%s: scan %s %s is not a range of 8-byte words inside SIZE\n", prog, off_arg, len_arg);
                return 2;
            }
            verify_or_die(prog, "scan", buf, off, len, 0x407);
            printf("scan ok\n");
            fflush(stdout);
        } else if (strcmp(line, "resident\n") == 0) {
            printf("resident %zu\n", present_pages(buf, hot));
            fflush(stdout);
        } else if (strcmp(line, "check\n") == 0) {
            verify_or_die(prog, "everything", buf, 0, size, 0x407);
            printf("ok\n");
            return 0;
        } else {
            fprintf(stderr, "%s: unknown command %s", prog, line);
            return 2;
        }
    }
    fprintf(stderr, "%s: stdin closed before `check`\n", prog);
    return 2;
}
