/* The socket tracer: one BPF object, so that all probes share the maps of maps.h.
 * Each concern lives in its own file. */
#include <uapi/linux/ptrace.h>
#include "data.c"
#include "conn.c"
#include "goid.c"
