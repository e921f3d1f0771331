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

/* Shared regions (holo-pager in a cluster, with shared_dir set). holo_attach maps the region
 * named `name` (1 to 64 of A-Z a-z 0-9 . _ -) of `size` bytes, creating it in the cluster if
 * it does not exist; every node that attaches it sees the bytes published by the last
 * holo_sync of any node. Pages read are copies under a read lease; the first write to a
 * granule takes its write lease (one writer per granule in the cluster; the other nodes'
 * copies are dropped first, so a write may wait for them). Returns the address, or NULL with
 * errno (EINVAL: bad name or size, or the cluster has the region with another size; ENOTSUP:
 * holo is not active) after a line on stderr saying why. Attaching a name again in the same
 * process returns the same mapping; HOLO_SHARE=name:size attaches one at start. One process
 * per node may attach a given name.
 *
 * holo_sync publishes this process's writes to the region around `addr` and gives the write
 * leases back: when it returns 0, a reader on any node that accesses those pages next reads
 * these bytes. Writes not synced are lost if the process dies; the last published version
 * stands. In a process that wrote nothing it returns 0 at once. -1 with errno on failure
 * (said on stderr). */
void *holo_attach(const char *name, size_t size);
int holo_sync(void *addr);

#ifdef __cplusplus
}
#endif

#endif
