/* Go: who hands work to whom.  Uprobes in each followed Go binary (Go >= 1.17, amd64
 * register ABI: arguments in RAX, RBX, RCX, RDI, RSI, R8..., the current g in R14):
 *   runtime.send(c, sg, ...)        a channel value goes straight to a receiver parked on
 *                                   it (sg->g); send() then readies it on this thread.
 *                                   Not for a chan struct{}: a signal carries no work
 *                                   (the work is elsewhere, e.g. grpc-go's controlbuf list,
 *                                   filled by any goroutine), so that wake counts as other
 *   runtime.ready(gp, ...)          gp becomes runnable: the hand-off above, or anything
 *                                   else (mutex, close, timer, GC)
 *   runtime.chanrecv, runtime.selectgo   the current goroutine starts a receive
 * and, for values that wait in a channel's buffer (the receiver was not parked, so
 * nothing is handed off and nothing woken: net/http's first request on a new
 * connection, sent before its writeLoop ever waited):
 *   runtime.chansend, chanrecv, selectgo   remember the goroutine's channel operation
 *                                   and its frame (go_frames)
 *   runtime.typedmemmove            called from that very frame: the operation copies a
 *                                   value into a buffer slot (ENQ: chansend, a select with
 *                                   only send cases) or out of one (DEQ: chanrecv, a select
 *                                   with only receive cases); with both kinds of case the
 *                                   direction is unknown (MIXED)
 *   runtime.recv(c, sg, ...)        a receiver meets a parked sender: on a full buffer it
 *                                   takes the head slot's value and puts the sender's in
 *                                   its place (SWAP); unbuffered, it takes the sender's
 *                                   value directly (DIRECT)
 * Every buffer copy runs under the channel's lock, so a slot's records reach the ring in
 * the order the values went through it: the agent names the sender of a dequeued value
 * from the slot's previous record (agent/stitch/handoff.py).  These are every path by
 * which a value enters a buffer (golang.py checks the binary's call sites of
 * typedmemmove in these functions match).
 * Each becomes a struct zt_wake in the ring; the agent links a goroutine's write to the
 * goroutine whose value it received only when the write was preceded by exactly one
 * receive, satisfied by exactly one hand-off or known buffered/direct value, and nothing
 * else woke it.  A Go function whose prologue grows the stack or yields to preemption
 * runs its entry twice: runtime.newstack (probed) marks that frame, and the second entry
 * records nothing. */

/* Runtime offsets these probes assume; agent/probes/golang.py checks each against the
 * binary's DWARF and follows no hand-offs of a binary where one differs. */
#define ZT_G_STACK_HI 8      /* runtime.g.stack.hi */
#define ZT_HCHAN_DATAQSIZ 8  /* runtime.hchan.dataqsiz */
#define ZT_HCHAN_BUF 16      /* runtime.hchan.buf */
#define ZT_HCHAN_RECVX 48    /* runtime.hchan.recvx */
#define ZT_TYPE_SIZE 0       /* runtime._type.size */
#define ZT_G_SCHED_SP 56     /* runtime.g.sched.sp */

/* go_frames: the channel operation a goroutine is in */
#define ZT_OP_SEND 1
#define ZT_OP_RECV 2
#define ZT_OP_SELECT_RECV 3
#define ZT_OP_SELECT_SEND 4
#define ZT_OP_SELECT_MIXED 5
#define ZT_OP_RECVFN 6 /* runtime.recv: its copies are recorded at its entry */

BPF_HASH(go_runtime, __u32, struct zt_go_runtime, 1024);
/* zt_wake records lost in the ring (all CPUs), carried by every record: a gap shows.
 * Also counts a buffer copy of a channel operation whose frame was not known. */
BPF_ARRAY(go_wake_lost, __u32, 1);

struct zt_go_gkey {
    __u64 g;
    __u32 tgid;
    __u32 _pad;
};
/* (process, sending g) -> the g that runtime.send is handing a value to, until the
 * sender's ready() of it.  Keyed by goroutine, not thread: the sender may be preempted
 * at goready's prologue and resume on another thread. */
BPF_HASH(go_sendto, struct zt_go_gkey, __u64, 16384);
/* A frame is named by its return-address slot's distance from the top of the goroutine's
 * stack (stack copies keep it) and the return address in it. */
struct zt_go_frame {
    __u64 depth;
    __u64 ret;
    __u32 op;
    __u32 rerun; /* runtime.newstack ran for this frame's prologue: it will enter again */
};
/* (process, g) -> its latest channel operation.  An entry is read microseconds after it
 * is written, at a copy inside that operation; LRU: dead goroutines' entries go first. */
BPF_TABLE("lru_hash", struct zt_go_gkey, struct zt_go_frame, go_frames, 65536);
struct zt_go_site {
    __u64 ret;
    __u32 tgid;
    __u32 _pad;
};
/* return addresses of typedmemmove calls seen inside channel operations: one reached with
 * no frame known (forgotten) is a copy gone unrecorded, counted as a loss */
BPF_HASH(go_copy_sites, struct zt_go_site, __u8, 4096);
/* uprobe hits per probe (bench/bench_gowake.py --cost): send, ready, chanrecv, selectgo,
 * chansend, recv, typedmemmove, newstack */
BPF_PERCPU_ARRAY(go_probe_hits, __u64, 8);

static __always_inline void zt_go_hit(int probe)
{
    __u64 *n = go_probe_hits.lookup(&probe);
    if (n)
        *n += 1;
}

static __always_inline void zt_go_lost(void)
{
    int zero = 0;
    __u32 *lost = go_wake_lost.lookup(&zero);
    if (lost)
        __sync_fetch_and_add(lost, 1);
}

/* The goroutine (g) this thread runs for: g itself, or on the system stack (g == m->g0)
 * the goroutine that switched to it (m->curg).  0 in the scheduler (curg is nil there:
 * timers, netpoll, finalizers), or when a read fails. */
static __always_inline __u64 zt_go_curg(struct pt_regs *ctx, struct zt_go_runtime *rt)
{
    __u64 g = ctx->r14, m = 0, g0 = 0;
    if (!g)
        return 0;
    if (bpf_probe_read_user(&m, sizeof(m), (void *)(g + rt->g_m)) != 0 || !m)
        return 0;
    if (bpf_probe_read_user(&g0, sizeof(g0), (void *)(m + rt->m_g0)) != 0)
        return 0;
    if (g == g0) {
        g = 0;
        if (bpf_probe_read_user(&g, sizeof(g), (void *)(m + rt->m_curg)) != 0)
            return 0;
    }
    return g;
}

/* goid of zt_go_curg's goroutine; 0 for none */
static __always_inline __u64 zt_go_goid(struct zt_go_runtime *rt, __u64 g)
{
    __u64 goid = 0;
    if (!g || bpf_probe_read_user(&goid, sizeof(goid), (void *)(g + rt->goid)) != 0)
        return 0;
    return goid;
}

static __always_inline __u64 zt_go_current(struct pt_regs *ctx, struct zt_go_runtime *rt)
{
    return zt_go_goid(rt, zt_go_curg(ctx, rt));
}

/* thread_goid: the goroutine runtime.execute last put on this thread, or, with
 * has_other, `other` (SWAP, MIXED) */
static __always_inline void zt_wake_emit2(__u64 id, __u8 kind, __u64 waker, __u64 goid,
                                          __u64 other, int has_other)
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
    if (has_other) {
        w.thread_goid = other;
    } else {
        __u64 *tg = goids.lookup(&tid);
        if (tg)
            w.thread_goid = *tg;
    }
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

static __always_inline void zt_wake_emit(__u64 id, __u8 kind, __u64 waker, __u64 goid)
{
    zt_wake_emit2(id, kind, waker, goid, 0, 0);
}

/* Remember that the current goroutine entered channel operation op (at function entry:
 * SP points at the return address).  Returns 1 when this is the same call entering
 * again (runtime.newstack, run by its prologue to grow the stack or to preempt, marked
 * its frame), else 0. */
static __always_inline int zt_go_enter(struct pt_regs *ctx, __u32 tgid, __u32 op)
{
    struct zt_go_gkey k = {};
    k.g = ctx->r14;
    k.tgid = tgid;
    __u64 hi = 0, ret = 0;
    if (!k.g || bpf_probe_read_user(&hi, sizeof(hi), (void *)(k.g + ZT_G_STACK_HI)) != 0
        || bpf_probe_read_user(&ret, sizeof(ret), (void *)ctx->sp) != 0)
        return 0;
    struct zt_go_frame f = {};
    f.depth = hi - ctx->sp;
    f.ret = ret;
    f.op = op;
    struct zt_go_frame *old = go_frames.lookup(&k);
    if (old && old->rerun && old->op == op && old->depth == f.depth && old->ret == f.ret) {
        old->rerun = 0;
        return 1;
    }
    go_frames.update(&k, &f);
    return 0;
}

/* runtime.newstack, on g0 for m->curg, called by morestack from a function's prologue
 * (before it did anything): that function starts again from its entry afterwards.  Its
 * SP at entry is in curg->sched.sp; if that is the frame of curg's latest channel
 * operation, mark it: the next entry of that frame is not a new operation. */
int zt_go_newstack(struct pt_regs *ctx)
{
    zt_go_hit(7);
    __u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct zt_go_runtime *rt = go_runtime.lookup(&tgid);
    if (!rt)
        return 0;
    struct zt_go_gkey k = {};
    k.tgid = tgid;
    __u64 m = 0, sp = 0, hi = 0, ret = 0;
    if (!ctx->r14 || bpf_probe_read_user(&m, sizeof(m), (void *)(ctx->r14 + rt->g_m)) != 0 || !m
        || bpf_probe_read_user(&k.g, sizeof(k.g), (void *)(m + rt->m_curg)) != 0 || !k.g)
        return 0;
    struct zt_go_frame *f = go_frames.lookup(&k);
    if (!f)
        return 0;
    if (bpf_probe_read_user(&sp, sizeof(sp), (void *)(k.g + ZT_G_SCHED_SP)) != 0
        || bpf_probe_read_user(&hi, sizeof(hi), (void *)(k.g + ZT_G_STACK_HI)) != 0
        || bpf_probe_read_user(&ret, sizeof(ret), (void *)sp) != 0)
        return 0;
    if (hi - sp == f->depth && ret == f->ret)
        f->rerun = 1;
    return 0;
}

int zt_go_send(struct pt_regs *ctx)
{
    zt_go_hit(0);
    __u32 tgid = bpf_get_current_pid_tgid() >> 32;
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
    struct zt_go_gkey k = {};
    k.g = ctx->r14; /* send() runs on the sender's own stack */
    k.tgid = tgid;
    if (k.g)
        go_sendto.update(&k, &gp);
    return 0;
}

int zt_go_ready(struct pt_regs *ctx)
{
    zt_go_hit(1);
    __u64 id = bpf_get_current_pid_tgid();
    __u32 tgid = id >> 32;
    struct zt_go_runtime *rt = go_runtime.lookup(&tgid);
    if (!rt)
        return 0;
    __u64 gp = ctx->ax, goid = 0;
    if (!gp || bpf_probe_read_user(&goid, sizeof(goid), (void *)(gp + rt->goid)) != 0)
        return 0;
    /* send() readies its receiver next (goready -> systemstack -> ready, m->curg the
     * sender), with nothing readied in between: a pending send of this goroutine to
     * this very g is that hand-off. */
    __u8 kind = ZT_WAKE_OTHER;
    struct zt_go_gkey k = {};
    k.g = zt_go_curg(ctx, rt);
    k.tgid = tgid;
    if (k.g) {
        __u64 *to = go_sendto.lookup(&k);
        if (to) {
            if (*to == gp)
                kind = ZT_WAKE_HANDOFF;
            go_sendto.delete(&k);
        }
    }
    zt_wake_emit(id, kind, zt_go_goid(rt, k.g), goid);
    return 0;
}

static __always_inline int zt_go_receive(struct pt_regs *ctx, __u32 op)
{
    __u64 id = bpf_get_current_pid_tgid();
    __u32 tgid = id >> 32;
    struct zt_go_runtime *rt = go_runtime.lookup(&tgid);
    if (!rt)
        return 0;
    if (zt_go_enter(ctx, tgid, op))
        return 0; /* the same receive entering again: recorded already */
    __u64 goid = zt_go_current(ctx, rt);
    if (goid)
        zt_wake_emit(id, ZT_WAKE_RECV, 0, goid);
    return 0;
}

/* runtime.chanrecv(c, ep, block) */
int zt_go_chanrecv(struct pt_regs *ctx)
{
    zt_go_hit(2);
    return zt_go_receive(ctx, ZT_OP_RECV);
}

/* runtime.selectgo(cas0, order0, pc0, nsends, nrecvs, block): nsends in RDI, nrecvs in RSI */
int zt_go_select(struct pt_regs *ctx)
{
    zt_go_hit(3);
    __u32 op = ZT_OP_SELECT_MIXED;
    if (ctx->di == 0)
        op = ZT_OP_SELECT_RECV;
    else if (ctx->si == 0)
        op = ZT_OP_SELECT_SEND;
    return zt_go_receive(ctx, op);
}

/* runtime.chansend(c, ep, block, callerpc) */
int zt_go_chansend(struct pt_regs *ctx)
{
    zt_go_hit(4);
    __u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!go_runtime.lookup(&tgid))
        return 0;
    zt_go_enter(ctx, tgid, ZT_OP_SEND);
    return 0;
}

/* runtime.recv(c, sg, ep, unlockf, skip), c locked, sg a sender parked on c */
int zt_go_recvfrom(struct pt_regs *ctx)
{
    zt_go_hit(5);
    __u64 id = bpf_get_current_pid_tgid();
    __u32 tgid = id >> 32;
    struct zt_go_runtime *rt = go_runtime.lookup(&tgid);
    if (!rt)
        return 0;
    if (zt_go_enter(ctx, tgid, ZT_OP_RECVFN))
        return 0; /* the same call entering again: recorded already */
    __u64 c = ctx->ax, dataqsiz = 0, gp = 0, sender = 0;
    __u16 elemsize = 0;
    if (bpf_probe_read_user(&elemsize, sizeof(elemsize), (void *)(c + rt->hchan_elemsize)) != 0
        || bpf_probe_read_user(&dataqsiz, sizeof(dataqsiz), (void *)(c + ZT_HCHAN_DATAQSIZ)) != 0) {
        zt_go_lost(); /* a buffer may have changed unseen */
        return 0;
    }
    if (!elemsize)
        return 0; /* a signal: no work, and zero-size slots are never recorded */
    if (bpf_probe_read_user(&gp, sizeof(gp), (void *)(ctx->bx + rt->sudog_g)) == 0 && gp)
        bpf_probe_read_user(&sender, sizeof(sender), (void *)(gp + rt->goid));
    __u64 goid = zt_go_current(ctx, rt);
    if (dataqsiz == 0) {
        if (sender && goid)
            zt_wake_emit(id, ZT_WAKE_DIRECT, sender, goid);
        return 0;
    }
    __u64 buf = 0, recvx = 0;
    if (bpf_probe_read_user(&buf, sizeof(buf), (void *)(c + ZT_HCHAN_BUF)) != 0
        || bpf_probe_read_user(&recvx, sizeof(recvx), (void *)(c + ZT_HCHAN_RECVX)) != 0) {
        zt_go_lost();
        return 0;
    }
    zt_wake_emit2(id, ZT_WAKE_SWAP, buf + recvx * elemsize, goid, sender, 1);
    return 0;
}

/* runtime.typedmemmove(typ, dst, src): a buffer copy when called from the frame of the
 * goroutine's channel operation (the caller's frame pointer is still in RBP: its return
 * address sits at RBP + 8) */
int zt_go_copy(struct pt_regs *ctx)
{
    zt_go_hit(6);
    __u64 id = bpf_get_current_pid_tgid();
    __u32 tgid = id >> 32;
    struct zt_go_runtime *rt = go_runtime.lookup(&tgid);
    if (!rt)
        return 0;
    struct zt_go_gkey k = {};
    k.g = ctx->r14;
    k.tgid = tgid;
    struct zt_go_site site = {};
    site.tgid = tgid;
    if (!k.g || bpf_probe_read_user(&site.ret, sizeof(site.ret), (void *)ctx->sp) != 0)
        return 0;
    struct zt_go_frame *f = go_frames.lookup(&k);
    __u64 hi = 0, ret = 0, slot = ctx->bp + 8;
    if (!f || bpf_probe_read_user(&hi, sizeof(hi), (void *)(k.g + ZT_G_STACK_HI)) != 0
        || hi - slot != f->depth || bpf_probe_read_user(&ret, sizeof(ret), (void *)slot) != 0
        || ret != f->ret) {
        if (go_copy_sites.lookup(&site))
            zt_go_lost(); /* a channel operation's copy whose frame was forgotten */
        return 0;
    }
    __u32 op = f->op;
    if (!go_copy_sites.lookup(&site)) {
        __u8 one = 1;
        go_copy_sites.update(&site, &one);
    }
    if (op == ZT_OP_RECVFN)
        return 0;
    __u64 size = 0;
    if (bpf_probe_read_user(&size, sizeof(size), (void *)(ctx->ax + ZT_TYPE_SIZE)) != 0) {
        zt_go_lost();
        return 0;
    }
    if (!size)
        return 0; /* zero-size values: signals, and every slot is one address */
    __u64 goid = zt_go_current(ctx, rt);
    if (op == ZT_OP_SEND || op == ZT_OP_SELECT_SEND)
        zt_wake_emit(id, ZT_WAKE_ENQ, ctx->bx, goid);
    else if (op == ZT_OP_RECV || op == ZT_OP_SELECT_RECV)
        zt_wake_emit(id, ZT_WAKE_DEQ, ctx->cx, goid);
    else
        zt_wake_emit2(id, ZT_WAKE_MIXED, ctx->bx, goid, ctx->cx, 1);
    return 0;
}
