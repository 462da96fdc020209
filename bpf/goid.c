/* Go: which goroutine a thread runs.  runtime.execute(gp *g, ...) is where the Go
 * scheduler switches a thread to a goroutine; under the register ABI (Go >= 1.17,
 * amd64) gp is in RAX.  Attached by the agent per Go binary it finds. */

int zt_go_execute(struct pt_regs *ctx)
{
    __u64 id = bpf_get_current_pid_tgid();
    __u32 tgid = id >> 32, tid = (__u32)id;
    __u32 *off = go_goid_offset.lookup(&tgid);
    if (!off)
        return 0;
    __u64 goid = 0;
    if (bpf_probe_read_user(&goid, sizeof(goid), (void *)(ctx->ax + *off)) != 0)
        return 0;
    goids.update(&tid, &goid);
    return 0;
}

/* Hand-offs between goroutines (who woke whom): same object, shares goids and the ring. */
#include "gowake.c"
