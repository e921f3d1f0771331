/* holo.h: the C API of libholo.so, the holo LD_PRELOAD shim.
 *
 * A program runs unmodified under holo; this API is optional. To use it and still run
 * without the shim, declare the functions weak (`#pragma weak holo_on_pressure`) and call
 * them only when their address is not null.
 */
#ifndef HOLO_H
#define HOLO_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Memory pressure: when holo-pager asks this process to release memory (the first step of
 * its response, before it demotes pages), the shim runs malloc_trim(0) and then calls
 * cb(bytes_wanted, arg) on a thread of the shim's own (not a signal handler: any call is
 * allowed, freeing memory is the point). bytes_wanted is what holo-pager would like back
 * across its clients; free what the program can rebuild (caches). Requests come at most
 * every few seconds; those that arrive while cb runs are merged into one more call.
 * A null cb unregisters. Returns 0, or -1 with errno ENOTSUP when holo is disabled in this
 * process. Ignoring requests harms nothing. */
int holo_on_pressure(void (*cb)(size_t bytes_wanted, void *arg), void *arg);

#ifdef __cplusplus
}
#endif

#endif
