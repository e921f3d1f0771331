/* pressure_release SIZE CACHE
 *
 * A cooperative program for the pressure tests (run under the shim): registers a
 * holo_on_pressure callback that frees its CACHE-byte cache (something it could rebuild),
 * fills the cache and SIZE bytes of data, prints `ready`, blocks until a line arrives on
 * stdin, verifies the data, prints `pressure_release: N callbacks, last wanted W bytes,
 * cache freed|kept` and then `ok`.
 * Exit: 0 ok, 1 data mismatch, 2 usage (or not under holo), 3 system error. */
#include "common.h"
#include <holo.h>
#include <stdatomic.h>

/* Weak: the program must also start without the shim (and then says so). */
#pragma weak holo_on_pressure

static const char *prog = "pressure_release";

static atomic_ulong calls;
static atomic_ulong last_wanted;
static _Atomic(unsigned char *) cache;

/* Runs on the shim's release thread, never concurrently with itself. */
static void on_pressure(size_t bytes_wanted, void *arg)
{
    (void)arg;
    unsigned char *c = atomic_exchange(&cache, NULL);
    free(c);
    atomic_store(&last_wanted, bytes_wanted);
    atomic_fetch_add(&calls, 1);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s SIZE[K|M|G] CACHE[K|M|G]\n", prog);
        return 2;
    }
    size_t size = parse_size(argv[1]), cache_size = parse_size(argv[2]);
    if (size == 0 || size % 8 || cache_size == 0) {
        fprintf(stderr, "%s: SIZE must be a non-zero multiple of 8, CACHE non-zero\n", prog);
        return 2;
    }
    if (!holo_on_pressure) {
        fprintf(stderr, "%s: holo_on_pressure is missing: run me under libholo.so\n", prog);
        return 2;
    }
    if (holo_on_pressure(on_pressure, NULL) != 0)
        fail_sys(prog, "holo_on_pressure");
    unsigned char *c = malloc(cache_size);
    if (!c)
        fail_sys(prog, "malloc cache");
    memset(c, 0xca, cache_size);
    atomic_store(&cache, c);
    unsigned char *buf = malloc(size);
    if (!buf)
        fail_sys(prog, "malloc");
    fill_words(buf, size, 0x4e1e, 0);
    printf("ready\n");
    fflush(stdout);

    char line[256];
    if (!fgets(line, sizeof line, stdin))
        fprintf(stderr, "%s: stdin closed before a line arrived; verifying anyway\n", prog);
    verify_or_die(prog, "after the wait", buf, 0, size, 0x4e1e);
    printf("%s: %lu callbacks, last wanted %lu bytes, cache %s\n", prog, atomic_load(&calls),
           atomic_load(&last_wanted), atomic_load(&cache) ? "kept" : "freed");
    printf("ok\n");
    return 0;
}
