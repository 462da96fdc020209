/* Go: who hands work to whom.  Uprobes in each followed Go binary (Go >= 1.17, amd64
 * register ABI: arguments in RAX, RBX, RCX..., the current g in R14):
 *   runtime.send(c, sg, ...)        a channel value goes straight to a receiver parked on
 *                                   it (sg->g); send() then readies it on this thread.
 *                                   Not for a chan struct{}: a signal carries no work
 *                                   (the work is elsewhere, e.g. grpc-go's controlbuf list,
 *                                   filled by any goroutine), so that wake counts as other
 *   runtime.ready(gp, ...)          gp becomes runnable: the hand-off above, or anything
 *                                   else (mutex, close, timer, GC)
 *   runtime.chanrecv, runtime.selectgo   the current goroutine starts a receive
 * Each becomes a struct zt_wake in the ring; the agent (agent/stitch/handoff.py) links a
 * goroutine's write to its waker only when the write was preceded by exactly one receive,
 * satisfied by exactly one hand-off, and nothing else woke it.  (A Go function whose stack
 * must grow runs its entry twice, so a receive may be recorded twice: that only refuses.) */

BPF_HASH(go_runtime, __u32, struct zt_go_runtime, 1024);
/* thread -> the g that runtime.send is handing a value to, until its ready() */
BPF_HASH(go_sendto, __u32, __u64, 16384);
/* zt_wake records lost in the ring (all CPUs), carried by every record: a gap shows */
BPF_ARRAY(go_wake_lost, __u32, 1);

/* goid of the goroutine this thread runs for: g itself, or on the system stack (g == m->g0)
 * the goroutine that switched to it (m->curg).  0 in the scheduler (curg is nil there:
 * timers, netpoll, finalizers), or when a read fails. */
static __always_inline __u64 zt_go_current(struct pt_regs *ctx, struct zt_go_runtime *rt)
{
    __u64 g = ctx->r14, m = 0, g0 = 0, goid = 0;
    if (!g)
        return 0;
    if (bpf_probe_read_user(&m, sizeof(m), (void *)(g + rt->g_m)) != 0 || !m)
        return 0;
    if (bpf_probe_read_user(&g0, sizeof(g0), (void *)(m + rt->m_g0)) != 0)
        return 0;
    if (g == g0) {
        g = 0;
        if (bpf_probe_read_user(&g, sizeof(g), (void *)(m + rt->m_curg)) != 0 || !g)
            return 0;
    }
    if (bpf_probe_read_user(&goid, sizeof(goid), (void *)(g + rt->goid)) != 0)
        return 0;
    return goid;
}

static __always_inline void zt_wake_emit(__u64 id, __u8 kind, __u64 waker, __u64 goid)
{
    int zero = 0;
    struct zt_config *cfg = config.lookup(&zero);
    if (!cfg || !cfg->enabled)
        return;
    __u32 tid = (__u32)id;
    struct zt_wake w = {};
    w.ts = bpf_ktime_get_ns();
    w.waker = waker;
    w.goid = goid;
    __u64 *tg = goids.lookup(&tid);
    if (tg)
        w.thread_goid = *tg;
    w.pid = id >> 32;
    w.tid = tid;
    w.type = ZT_EV_WAKE;
    w.kind = kind;
    __u32 *lost = go_wake_lost.lookup(&zero);
    if (lost)
        w.lost = *lost;
    /* no wake-up: socket events wake the agent, and it polls every 50 ms anyway */
    if (events.ringbuf_output(&w, sizeof(w), BPF_RB_NO_WAKEUP) != 0) {
        zt_count_drop(ZT_DROP_WAKE_FULL);
        if (lost)
            __sync_fetch_and_add(lost, 1);
    }
}

int zt_go_send(struct pt_regs *ctx)
{
    __u64 id = bpf_get_current_pid_tgid();
    __u32 tgid = id >> 32, tid = (__u32)id;
    struct zt_go_runtime *rt = go_runtime.lookup(&tgid);
    if (!rt)
        return 0;
    __u16 elemsize = 0;
    if (bpf_probe_read_user(&elemsize, sizeof(elemsize), (void *)(ctx->ax + rt->hchan_elemsize)) != 0
        || !elemsize)
        return 0;
    __u64 gp = 0;
    if (bpf_probe_read_user(&gp, sizeof(gp), (void *)(ctx->bx + rt->sudog_g)) != 0 || !gp)
        return 0;
    go_sendto.update(&tid, &gp);
    return 0;
}

int zt_go_ready(struct pt_regs *ctx)
{
    __u64 id = bpf_get_current_pid_tgid();
    __u32 tgid = id >> 32, tid = (__u32)id;
    struct zt_go_runtime *rt = go_runtime.lookup(&tgid);
    if (!rt)
        return 0;
    __u64 gp = ctx->ax, goid = 0;
    if (!gp || bpf_probe_read_user(&goid, sizeof(goid), (void *)(gp + rt->goid)) != 0)
        return 0;
    /* send() readies its receiver on the same thread (goready -> systemstack -> ready),
     * with nothing readied in between: a pending send to this very g is that hand-off. */
    __u8 kind = ZT_WAKE_OTHER;
    __u64 *to = go_sendto.lookup(&tid);
    if (to) {
        if (*to == gp)
            kind = ZT_WAKE_HANDOFF;
        go_sendto.delete(&tid);
    }
    zt_wake_emit(id, kind, zt_go_current(ctx, rt), goid);
    return 0;
}

int zt_go_recv(struct pt_regs *ctx)
{
    __u64 id = bpf_get_current_pid_tgid();
    __u32 tgid = id >> 32;
    struct zt_go_runtime *rt = go_runtime.lookup(&tgid);
    if (!rt)
        return 0;
    __u64 goid = zt_go_current(ctx, rt);
    if (goid)
        zt_wake_emit(id, ZT_WAKE_RECV, 0, goid);
    return 0;
}
