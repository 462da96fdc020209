/* Data syscalls: read/write, readv/writev, send/recv (to/from, msg, mmsg).
 * Enter: filter, find the socket, remember the arguments and the TCP sequence number.
 * Exit: one event per message moved, with the first ZT_PAYLOAD_MAX bytes. */
#include "maps.h"
#include "sock.h"

#define ZT_MSG_PEEK 2
#define ZT_EINPROGRESS 115

static __always_inline struct zt_config *zt_cfg(void)
{
    int zero = 0;
    return config.lookup(&zero);
}

/* Process-level filters; 1 when the current task is to be traced. */
static __always_inline int zt_task_wanted(struct zt_config *cfg, __u32 tgid)
{
    if (!cfg->enabled || tgid == cfg->self_pid)
        return 0;
    if (cfg->filter_pid && !filter_pids.lookup(&tgid))
        return 0;
    if (cfg->filter_cgroup) {
        __u64 cg = bpf_get_current_cgroup_id();
        if (!filter_cgroups.lookup(&cg))
            return 0;
    }
    return 1;
}

/* Socket-level filters; 1 when this inet socket is to be traced (c: its sock_common
 * block, already loaded). */
static __always_inline int zt_skc_wanted(struct zt_config *cfg, struct zt_skc *c, __u16 lport,
                                         __u16 rport)
{
    if (cfg->filter_port && !filter_ports.lookup(&lport) && !filter_ports.lookup(&rport))
        return 0;
    if (cfg->filter_netns) {
        __u32 ns = zt_skc_netns(c);
        if (!filter_netns.lookup(&ns))
            return 0;
    }
    return 1;
}

static __always_inline int zt_sock_wanted(struct zt_config *cfg, __u64 sk, __u16 lport, __u16 rport)
{
    if (!cfg->filter_port && !cfg->filter_netns)
        return 1;
    struct zt_skc c;
    if (!ZT_SKC_LOAD(&c, sk))
        return 0;
    return zt_skc_wanted(cfg, &c, lport, rport);
}

static __always_inline int zt_is_egress(__u8 sys)
{
    return sys == ZT_SYS_WRITE || sys == ZT_SYS_WRITEV || sys == ZT_SYS_SENDTO ||
           sys == ZT_SYS_SENDMSG || sys == ZT_SYS_SENDMMSG;
}

/* The TCP seq of direction dir of socket sk now: the next byte to be written or read. */
static __always_inline __u32 zt_seq_now(__u64 sk, __u8 dir)
{
    __u32 seq = 0;
    if (dir == ZT_DIR_EGRESS)
        ZT_READ(seq, sk, OFF_TCP_WRITE_SEQ);
    else
        ZT_READ(seq, sk, OFF_TCP_COPIED_SEQ);
    return seq;
}

/* Keep what `key` names?  A hash, not a random draw: an exchange is keyed by the TCP seq
 * of its request's first byte, which the client's write and the server's read agree on
 * (on one host and across hosts), so both ends keep or shed the same requests; and a
 * lower rate keeps a subset of what a higher one keeps. */
static __always_inline int zt_keep(struct zt_config *cfg, __u64 key)
{
    __u32 h = (__u32)((key ^ (key >> 32)) * 2654435761u);
    return cfg->keep >= ZT_KEEP_ALL || (h >> 16) < cfg->keep;
}

/* A shed syscall that turned the direction was left at its entry (zt_shed_at_entry):
 * whether it moved bytes, which zt_sample would have asked at its exit, is told now by
 * its direction's seq, before this syscall moves any.  Moved: its direction is the last
 * one, as zt_sample would have set it; nothing moved (EAGAIN): it never happened. */
static __always_inline void zt_settle(struct zt_sockstate *st, __u64 sk)
{
    __u8 dir = st->pend & ZT_PEND_EGRESS ? ZT_DIR_EGRESS : ZT_DIR_INGRESS;
    __u32 moved = zt_seq_now(sk, dir) - st->pend_seq;
    if (moved) {
        if (st->pend & ZT_PEND_REQ)
            zt_stat(ZT_STAT_SHED_EXCHANGES, 1);
        zt_stat(ZT_STAT_SHED_BYTES, moved);
        st->last_dir = dir;
    }
    st->pend = 0;
}

/* zt_shed_at_entry / zt_sample: what a shed syscall of a server socket tells the agent.
 * The agent never sees a shed exchange's bytes; without a word of where its request was
 * read, an event loop's history misses a request that is open on the thread, and the
 * stitcher links that request's calls (kept: another exchange, another hash) under
 * another open request (nginx: 17-23 wrong links of ~200 at 60 % kept).  So the turn to
 * the request direction (its read begins) and the turn to the answer are counted per
 * thread (zt_shed_turn), and every kept record of the thread carries the counters
 * (abi.h ZT_F_SHED_STAMP): no record of a shed exchange at all.  (Two header-only
 * marker records an exchange tripled the records a request under overload: 0.91 ->
 * 2.75, the agent 16 -> 27.5 us a request.) */
#define ZT_SHED_PLAIN 1  /* shed, nothing to tell */
#define ZT_SHED_REQUEST 2 /* shed, and a server's request read begins: counted */
#define ZT_SHED_ANSWER 3  /* shed, and a server's answer begins: counted */

/* The thread as the agent keys its history (maps.h zt_thread_key). */
static __always_inline void zt_thread_key_now(struct zt_config *cfg, struct zt_thread_key *k)
{
    __u64 id = bpf_get_current_pid_tgid();
    __u32 tid = (__u32)id;
    k->pid = id >> 32;
    k->tid = tid;
    k->goid = 0;
    if (cfg->track_goid) {
        __u64 *g = goids.lookup(&tid);
        if (g && *g) {
            k->goid = *g;
            k->tid = 0;
        }
    }
}

/* The shed request read on st's socket is answered (or its socket closed): no longer
 * open on the thread that read it. */
static __always_inline void zt_shed_answered(struct zt_sockstate *st)
{
    if (!st->reading)
        return;
    st->reading = 0;
    struct zt_shedctr *c = shedctrs.lookup(&st->reader);
    if (c && c->open)
        __sync_fetch_and_add(&c->open, -1); /* XADD: no fetch-and-sub on 32 bits */
}

/* A shed server exchange turns on this thread (ZT_SHED_REQUEST / ZT_SHED_ANSWER): count
 * it for the stamps.  A read that finds nothing (EAGAIN) is counted too (decided at
 * entry), and so is the next one; the request is open once, from the first. */
static __always_inline void zt_shed_turn(struct zt_config *cfg, struct zt_sockstate *st,
                                         int kind)
{
    struct zt_thread_key k = {};
    zt_thread_key_now(cfg, &k);
    struct zt_shedctr *c = shedctrs.lookup(&k);
    if (!c) {
        struct zt_shedctr z = {};
        shedctrs.update(&k, &z);
        c = shedctrs.lookup(&k);
        if (!c)
            return;
    }
    if (kind == ZT_SHED_REQUEST) {
        c->reads += 1;
        c->last_read = 1;
        if (!st->reading) {
            st->reading = 1;
            st->reader = k;
            __sync_fetch_and_add(&c->open, 1);
        }
    } else {
        c->answers += 1;
        c->last_read = 0;
        zt_shed_answered(st);
    }
}

/* The thread's shed counters now, for a kept record (abi.h ZT_STAMP_*). */
static __always_inline __u64 zt_shed_stamp(struct zt_config *cfg)
{
    struct zt_thread_key k = {};
    zt_thread_key_now(cfg, &k);
    struct zt_shedctr *c = shedctrs.lookup(&k);
    if (!c)
        return 0;
    __u64 open = c->open;
    if (open > ZT_STAMP_OPEN_MAX)
        open = ZT_STAMP_OPEN_MAX;
    return (__u64)(c->reads & 0xffffff) | ((__u64)(c->answers & 0xffffff) << ZT_STAMP_ANSWERS_SHIFT) |
           (open << ZT_STAMP_OPEN_SHIFT) | (c->last_read ? ZT_STAMP_LAST_READ : 0);
}

/* Sampling at a data syscall's entry: 1 when its bytes are shed whatever it returns, so
 * that nothing is carried to its exit (the cheapest path: no in-flight slot, no exit
 * work; under overload most syscalls take it).  That is so when the socket's current
 * exchange is shed and the syscall cannot start a kept one: it goes the same way as the
 * last one that moved bytes, or it turns to the response direction, or it turns to the
 * request direction where the hash of its seq sheds the new exchange too (zt_keep: its
 * exit would decide the same from the same seq).  A turn's effect on the direction
 * waits for the socket's next syscall (zt_settle): whether it moved bytes is not known
 * here.  Anything else (kept exchanges, a kept new one, sockets sampling has not seen)
 * goes to the exit, zt_sample.  Called before the socket's addresses are read: a
 * socket has an entry only once the filters wanted it (conn.c, zt_sample), and an
 * entry with a known role is a TCP connection's (conn.c and zt_sample make no other). */
static __always_inline int zt_shed_at_entry(struct zt_config *cfg, __u64 sk, __u8 sys)
{
    struct zt_sockstate *st = socks.lookup(&sk);
    if (!st)
        return 0;
    if (st->pend)
        zt_settle(st, sk);
    if (!st->shed)
        return 0;
    __u8 dir = zt_is_egress(sys) ? ZT_DIR_EGRESS : ZT_DIR_INGRESS;
    if (st->role == ZT_ROLE_UNKNOWN) {
        if (zt_keep(cfg, sk >> 3))
            return 0; /* the keep rate rose past this connection's hash: zt_sample */
        zt_stat(ZT_STAT_SHED_SYSCALLS, 1);
        return 1;
    }
    if (st->gen == cfg->shed_gen && st->last_dir == dir) {
        zt_stat(ZT_STAT_SHED_SYSCALLS, 1);
        return 1;
    }
    if (st->gen != cfg->shed_gen)
        return 0;
    __u8 req_dir = st->role == ZT_ROLE_CLIENT ? ZT_DIR_EGRESS : ZT_DIR_INGRESS;
    __u32 seq = zt_seq_now(sk, dir);
    if (dir == req_dir && zt_keep(cfg, seq))
        return 0; /* a kept exchange starts here: its exit tells the agent */
    st->pend = ZT_PEND_SET | (dir == ZT_DIR_EGRESS ? ZT_PEND_EGRESS : 0) |
               (dir == req_dir ? ZT_PEND_REQ : 0);
    st->pend_seq = seq;
    zt_stat(ZT_STAT_SHED_SYSCALLS, 1);
    if (st->role != ZT_ROLE_SERVER)
        return ZT_SHED_PLAIN;
    int kind = dir == req_dir ? ZT_SHED_REQUEST : ZT_SHED_ANSWER;
    zt_shed_turn(cfg, st, kind);
    return kind;
}

#ifdef ZT_TLS
/* bpf/tls.c, appended to this source when TLS is traced (agent/probes/loader.py) */
static __always_inline int zt_tls_sys_enter(void *ctx, struct zt_active *a);
#endif

static __always_inline int zt_data_enter(void *ctx, int fd, __u8 sys, __u64 buf, __u64 count,
                                         __u64 addr, __u64 msg_flags)
{
    __u64 id = bpf_get_current_pid_tgid();
    struct zt_config *cfg = zt_cfg();
    if (!cfg || !zt_task_wanted(cfg, id >> 32))
        return 0;
    if (msg_flags & ZT_MSG_PEEK) /* the bytes will be read again, for real */
        return 0;
    __u64 sk = zt_fd_to_sock(fd);
    if (!sk)
        return 0;
    /* a shed syscall (most of them under overload) needs none of the socket's addresses:
     * two kernel reads fewer on the path nearly every syscall takes then */
    if (cfg->shed_mode && zt_shed_at_entry(cfg, sk, sys))
        return 0;
    __u8 family = 0, transport = 0;
    __u16 lport = 0, rport = 0;
    struct zt_skc c;
    if (!ZT_SKC_LOAD(&c, sk) || !zt_skc_basics(&c, &family, &transport, &lport, &rport))
        return 0;
    if (!zt_skc_wanted(cfg, &c, lport, rport))
        return 0;
    /* at entry: what was open when it began */
    __u64 stamp = cfg->shed_mode ? zt_shed_stamp(cfg) : 0;

    struct zt_active *a = zt_active_get(1);
    if (!a) {
        zt_count_drop(ZT_DROP_ACTIVE_FULL);
        return 0;
    }
    a->ts_enter = bpf_ktime_get_ns();
    a->sk = sk;
    a->buf = buf;
    a->count = count;
    a->addr = addr;
    a->fd = fd;
    a->sys = sys;
    a->family = family;
    a->transport = transport;
    a->lport = lport;
    a->rport = rport;
    a->has_seq = 0;
    a->stamped = cfg->shed_mode;
    a->stamp = stamp;
    if (transport == ZT_IPPROTO_TCP) {
        if (zt_is_egress(sys))
            ZT_READ(a->seq, sk, OFF_TCP_WRITE_SEQ);
        else
            ZT_READ(a->seq, sk, OFF_TCP_COPIED_SEQ);
        a->has_seq = 1;
    }
    a->busy = 1;
#ifdef ZT_TLS
    /* the calls OpenSSL's socket BIO makes (and a few more), not the batched ones */
    if (sys != ZT_SYS_SENDMMSG && sys != ZT_SYS_RECVMMSG)
        return zt_tls_sys_enter(ctx, a);
#endif
    return 0;
}

/* struct iovec of the user ABI (64-bit), declared here: <linux/uio.h> pulls in a large
 * part of the kernel's headers, 0.8 CPU-s of clang at every start. */
struct zt_iovec {
    __u64 iov_base;
    __u64 iov_len;
};

/* Copy up to `want` bytes (<= ZT_PAYLOAD_MAX) spread over the first max_iov entries of
 * an iovec array (max_iov a constant: the verifier walks every iteration). */
static __always_inline __u32 zt_copy_iov(__u8 *dst, __u64 iov_ptr, __u64 iovcnt, __u64 want,
                                         const int max_iov)
{
    __u32 copied = 0;
    for (int i = 0; i < max_iov; i++) {
        if (i >= iovcnt || copied >= want)
            break;
        struct zt_iovec v = {};
        bpf_probe_read_user(&v, sizeof(v), (void *)(iov_ptr + i * sizeof(struct zt_iovec)));
        __u64 n = v.iov_len;
        if (n > want - copied)
            n = want - copied;
        if (n > ZT_PAYLOAD_MAX)
            n = ZT_PAYLOAD_MAX;
        __u32 off = copied & (ZT_PAYLOAD_MAX - 1);
        if (bpf_probe_read_user(dst + off, n, (void *)v.iov_base) != 0)
            break;
        copied += n;
    }
    return copied;
}

/* Fill the header common to every event of a finished syscall. */
static __always_inline void zt_fill(struct zt_event *ev, struct zt_active *a, __u64 id, long ret,
                                    __u64 now, struct zt_config *cfg)
{
    ev->ts_enter = a->ts_enter;
    ev->ts_exit = now;
    ev->cgroup_id = bpf_get_current_cgroup_id();
    ev->sock_id = a->sk;
    ev->ret = ret;
    ev->pid = id >> 32;
    ev->tid = (__u32)id;
    ev->fd = a->fd;
    ev->syscall = a->sys;
    ev->flags = 0;
    ev->captured = 0;
    ev->family = a->family;
    ev->transport = a->transport;
    ev->lport = a->lport;
    ev->rport = a->rport;
    ev->role = ZT_ROLE_UNKNOWN;
    ev->offset = 0;
    __builtin_memset(ev->laddr, 0, 16);
    __builtin_memset(ev->raddr, 0, 16);
    ev->netns = 0;
    /* addresses and namespace: one read of sock_common, one of struct net */
    struct zt_skc c;
    if (ZT_SKC_LOAD(&c, a->sk)) {
        if (a->transport == ZT_IPPROTO_UDP && !a->lport) /* bound by this very sendto */
            ZT_SKC_FIELD(ev->lport, &c, OFF_SK_NUM);
        zt_skc_addrs(&c, ev->family, ev);
        ev->netns = zt_skc_netns(&c);
    }
    zt_process_comm(ev->comm);
    ev->goid = 0;
    if (cfg->track_goid) {
        __u32 tid = (__u32)id;
        __u64 *g = goids.lookup(&tid);
        if (g)
            ev->goid = *g;
    }
}

/* Stamp direction and seq for `len` bytes, then submit.  Stream offsets are derived
 * by the agent from seq and the base seqs of the connection's connect/accept event:
 * no per-connection map is touched here, and offsets survive lost events. */
static __always_inline void zt_emit_data(struct zt_scratch *s, struct zt_config *cfg,
                                         struct zt_active *a, __u64 len, __u32 seq_delta)
{
    struct zt_event *ev = &s->ev;
    ev->type = ZT_EV_DATA;
    ev->ret = len;
    ev->direction = zt_is_egress(a->sys) ? ZT_DIR_EGRESS : ZT_DIR_INGRESS;
    if (a->has_seq) {
        ev->seq = a->seq + seq_delta;
        ev->flags |= ZT_F_HAS_SEQ;
    } else {
        ev->seq = 0;
    }
    __u32 captured = ev->captured;
    if (captured > ZT_PAYLOAD_MAX)
        captured = ZT_PAYLOAD_MAX;
    if (captured < len)
        ev->flags |= ZT_F_TRUNCATED;
    if (ev->flags & ZT_F_NOCAPTURE)
        zt_capture_count(len);
    zt_submit(s, sizeof(struct zt_event) + captured, cfg);
}

/* One message of sendmsg/recvmsg/…mmsg: payload from its iovecs, peer from msg_name. */
static __always_inline void zt_emit_msghdr(struct zt_scratch *s, struct zt_config *cfg,
                                           struct zt_active *a, __u64 msg, __u64 len,
                                           __u32 seq_delta, const int max_iov, int nocap)
{
    __u64 name = 0, iov = 0, iovlen = 0;
    bpf_probe_read_user(&name, sizeof(name), (void *)msg);
    bpf_probe_read_user(&iov, sizeof(iov), (void *)(msg + 16));
    bpf_probe_read_user(&iovlen, sizeof(iovlen), (void *)(msg + 24));
    __u64 want = nocap ? 0 : len < ZT_PAYLOAD_MAX ? len : ZT_PAYLOAD_MAX;
    s->ev.captured = zt_copy_iov(s->payload, iov, iovlen, want, max_iov);
    /* per message: the previous message of the same sendmmsg/recvmmsg set them */
    s->ev.flags &= ~(ZT_F_PEER_FROM_MSG | ZT_F_TRUNCATED);
    if (s->ev.transport == ZT_IPPROTO_UDP && name)
        zt_user_peer((void *)name, &s->ev);
    zt_emit_data(s, cfg, a, len, seq_delta);
}

/* Sampling under overload (zt_config.shed_mode; the agent sets keep from how far behind
 * it is).  Returns -1 when this syscall's bytes are not to be traced (a server's shed
 * exchange turning here is counted: zt_shed_turn), 1 when
 * it starts a kept exchange on a socket whose previous exchange was shed (the agent is
 * told with resume records first), else 0.  Decided at exit, on syscalls that moved
 * bytes: a read that found nothing (EAGAIN) starts no exchange. */
static __always_inline int zt_sample(struct zt_config *cfg, __u64 sk, __u8 dir, __u32 seq,
                                     __u8 transport, __u16 lport, __u8 *role)
{
    struct zt_sockstate *st = socks.lookup(&sk);
    if (!st) {
        if (cfg->keep >= ZT_KEEP_ALL)
            return 0;
        if (transport == ZT_IPPROTO_TCP) {
            struct zt_listen_key k = {.netns = zt_sock_netns(sk), .port = lport};
            if (listening.lookup(&k)) {
                /* a server connection opened before the agent: sampled by exchange like
                 * an accepted one; the exchange under way goes on (its start was not
                 * shed), the next turn to the request decides the next one */
                struct zt_sockstate n = {};
                n.role = ZT_ROLE_SERVER;
                n.last_dir = dir;
                n.gen = cfg->shed_gen;
                socks.update(&sk, &n);
                *role = ZT_ROLE_SERVER;
                return 0;
            }
        }
        /* first seen while sampling, role unknown: the connection is kept or shed whole */
        struct zt_sockstate n = {};
        n.role = ZT_ROLE_UNKNOWN;
        n.shed = zt_keep(cfg, sk >> 3) ? 0 : 1;
        n.last_dir = dir;
        n.gen = cfg->shed_gen;
        socks.update(&sk, &n);
        if (n.shed)
            zt_stat(ZT_STAT_SHED_CONNS, 1);
        return n.shed ? -1 : 0;
    }
    if (st->role == ZT_ROLE_UNKNOWN) {
        /* Shed whole at first sight, for as long as the keep rate leaves its hash out:
         * once the rate rises past it (the overload is over), the connection is traced
         * again from here (the agent sees a gap, as for any connection met mid-stream).
         * A kept one is not shed later: its exchanges' bounds are not known here. */
        if (st->shed && zt_keep(cfg, sk >> 3))
            st->shed = 0;
        return st->shed ? -1 : 0;
    }
    int out = 0;
    __u8 req_dir = st->role == ZT_ROLE_CLIENT ? ZT_DIR_EGRESS : ZT_DIR_INGRESS;
    if (st->gen != cfg->shed_gen) {
        /* first syscall since sampling began: where an exchange starts is not known
         * until the direction turns, so the current one goes on as it was */
        st->gen = cfg->shed_gen;
    } else if (dir == req_dir && st->last_dir != req_dir) {
        /* the request direction follows the response direction: a new exchange */
        if (zt_keep(cfg, seq)) {
            zt_stat(ZT_STAT_KEPT_EXCHANGES, 1);
            if (st->shed)
                out = 1;
            st->shed = 0;
            /* a shed request counted open on this socket (a turn that read nothing,
             * EAGAIN, counts too) is over once an exchange starts: no answer turn of a
             * shed exchange will come to end it */
            zt_shed_answered(st);
        } else {
            zt_stat(ZT_STAT_SHED_EXCHANGES, 1);
            st->shed = 1;
        }
    }
    __u8 turned = dir != st->last_dir;
    st->last_dir = dir;
    *role = st->role;
    if (!st->shed)
        return out;
    if (turned && st->role == ZT_ROLE_SERVER)
        zt_shed_turn(cfg, st, dir == req_dir ? ZT_SHED_REQUEST : ZT_SHED_ANSWER);
    return -1;
}

/* Where a socket is traced again after shed exchanges: a close and a connect/accept
 * (flag RESUMED) so that the agent starts the connection afresh at this exchange, its
 * bytes at offset 0, rather than see a gap it would have to resynchronise across.
 * The bases: this syscall's seq for its own direction (read at entry), the socket's
 * current seq for the other (nothing moved that way since the exchange began). */
static __always_inline void zt_emit_resume(struct zt_scratch *s, struct zt_config *cfg,
                                           struct zt_active *a, __u8 dir, __u8 role)
{
    struct zt_event *ev = &s->ev;
    ev->type = ZT_EV_CONN;
    ev->direction = 0;
    ev->role = ZT_ROLE_UNKNOWN;
    ev->seq = 0;
    ev->offset = 0;
    ev->ret = 0;
    ev->captured = 0;
    ev->syscall = ZT_SYS_CLOSE;
    ev->flags = ZT_F_RESUMED;
    zt_submit(s, sizeof(struct zt_event), cfg);
    __u32 other = 0;
    if (dir == ZT_DIR_EGRESS) {
        ZT_READ(other, a->sk, OFF_TCP_COPIED_SEQ);
        ev->seq = a->seq;
        ev->offset = other;
    } else {
        ZT_READ(other, a->sk, OFF_TCP_WRITE_SEQ);
        ev->seq = other;
        ev->offset = a->seq;
    }
    ev->syscall = role == ZT_ROLE_CLIENT ? ZT_SYS_CONNECT : ZT_SYS_ACCEPT;
    ev->role = role;
    ev->flags = ZT_F_RESUMED | ZT_F_HAS_SEQ;
    zt_submit(s, sizeof(struct zt_event), cfg);
    ev->flags = 0;
    ev->role = ZT_ROLE_UNKNOWN;
    ev->offset = 0;
    ev->syscall = a->sys;
}

/* Skip hints (abi.h): -1 when this syscall lies wholly inside a body the agent skips and
 * is not the last of it (not emitted), 1 when it ends that body (emitted without payload:
 * its time ends the message), else 0.  Only syscalls the capture would cut anyway (more
 * than ZT_PAYLOAD_MAX bytes) qualify, so the parser sees the same truncation as before. */
static __always_inline int zt_skip_hint(struct zt_active *a, __u8 dir, long ret)
{
    if (!a->has_seq || ret <= ZT_PAYLOAD_MAX)
        return 0;
    __u64 key = a->sk | dir;
    __u32 *until = skips.lookup(&key);
    if (!until)
        return 0;
    __s32 left = (__s32)(*until - (a->seq + (__u32)ret));
    if ((__s32)(*until - a->seq) <= 0 || left < 0) {
        skips.delete(&key); /* passed, or this syscall runs past it: done with */
        return 0;
    }
    if (left > 0) {
        zt_stat(ZT_STAT_SKIPPED_SYSCALLS, 1);
        zt_stat(ZT_STAT_SKIPPED_BYTES, ZT_PAYLOAD_MAX);
        return -1;
    }
    skips.delete(&key);
    zt_stat(ZT_STAT_SKIPPED_BYTES, ZT_PAYLOAD_MAX);
    return 1;
}

static __always_inline int zt_data_exit(long ret)
{
    __u64 id = bpf_get_current_pid_tgid();
    struct zt_active a;
    if (!zt_active_take(&a) || ret <= 0)
        return 0;
    struct zt_config *cfg = zt_cfg();
    int zero = 0;
    struct zt_scratch *s = scratch.lookup(&zero);
    if (!cfg || !s)
        return 0;
    __u8 dir = zt_is_egress(a.sys) ? ZT_DIR_EGRESS : ZT_DIR_INGRESS;
    __u8 role = ZT_ROLE_UNKNOWN;
    int resume = 0;
    if (cfg->shed_mode) {
        resume = zt_sample(cfg, a.sk, dir, a.seq, a.transport, a.lport, &role);
        if (resume < 0) {
            zt_stat(ZT_STAT_SHED_SYSCALLS, 1);
            zt_stat(ZT_STAT_SHED_BYTES, a.sys == ZT_SYS_SENDMMSG || a.sys == ZT_SYS_RECVMMSG
                                            ? 0 : ret);
            return 0;
        }
    }
    int hint = 0;
    if (cfg->skip_hints) {
        hint = zt_skip_hint(&a, dir, ret);
        if (hint < 0)
            return 0;
    }
    zt_fill(&s->ev, &a, id, ret, bpf_ktime_get_ns(), cfg);
    if (resume > 0 && a.has_seq)
        zt_emit_resume(s, cfg, &a, dir, role);
    if (a.stamped) { /* after the resume records: they reset offset and flags */
        s->ev.offset = a.stamp;
        s->ev.flags |= ZT_F_SHED_STAMP;
    }
    if (hint > 0) {
        s->ev.captured = 0; /* the whole length, no payload */
        zt_emit_data(s, cfg, &a, ret, 0);
        return 0;
    }
    /* Payload capture switched off for this cgroup (a pod, maps.h): decided before any
     * byte is copied; the records keep their lengths, seqs and times. */
    int nocap = zt_capture_off(s->ev.cgroup_id);
    if (nocap)
        s->ev.flags |= ZT_F_NOCAPTURE;

    if (a.sys == ZT_SYS_SENDMMSG || a.sys == ZT_SYS_RECVMMSG) {
        /* ret = messages moved; each struct mmsghdr is a user_msghdr + msg_len (64 bytes). */
        __u32 seq_delta = 0;
        for (int i = 0; i < ZT_MMSG_MAX; i++) {
            if (i >= ret)
                break;
            __u64 m = a.buf + i * 64;
            __u32 mlen = 0;
            bpf_probe_read_user(&mlen, sizeof(mlen), (void *)(m + 56));
            zt_emit_msghdr(s, cfg, &a, m, mlen, seq_delta, ZT_MMSG_IOV_MAX, nocap);
            seq_delta += mlen;
        }
        return 0;
    }
    /* One copy loop serves readv/writev and sendmsg/recvmsg (their iovecs are named by
     * the user_msghdr): the verifier walks each copy of a loop, iteration by iteration. */
    __u64 want = nocap ? 0 : ret < ZT_PAYLOAD_MAX ? ret : ZT_PAYLOAD_MAX;
    __u64 iov = a.buf, iovcnt = a.count, peer = a.addr;
    int vectored = a.sys == ZT_SYS_WRITEV || a.sys == ZT_SYS_READV;
    if (a.sys == ZT_SYS_SENDMSG || a.sys == ZT_SYS_RECVMSG) {
        bpf_probe_read_user(&peer, sizeof(peer), (void *)a.buf);
        bpf_probe_read_user(&iov, sizeof(iov), (void *)(a.buf + 16));
        bpf_probe_read_user(&iovcnt, sizeof(iovcnt), (void *)(a.buf + 24));
        vectored = 1;
    }
    if (vectored) {
        s->ev.captured = zt_copy_iov(s->payload, iov, iovcnt, want, ZT_IOV_MAX);
    } else if (want) {
        if (want > ZT_PAYLOAD_MAX)
            want = ZT_PAYLOAD_MAX;
        if (bpf_probe_read_user(s->payload, want, (void *)a.buf) == 0)
            s->ev.captured = want;
        else
            zt_count_drop(ZT_DROP_READ_FAULT);
    }
    if (s->ev.transport == ZT_IPPROTO_UDP && peer)
        zt_user_peer((void *)peer, &s->ev);
    zt_emit_data(s, cfg, &a, ret, 0);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_write) { return zt_data_enter(args, args->fd, ZT_SYS_WRITE, (__u64)args->buf, 0, 0, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_read) { return zt_data_enter(args, args->fd, ZT_SYS_READ, (__u64)args->buf, 0, 0, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_writev) { return zt_data_enter(args, args->fd, ZT_SYS_WRITEV, (__u64)args->vec, args->vlen, 0, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_readv) { return zt_data_enter(args, args->fd, ZT_SYS_READV, (__u64)args->vec, args->vlen, 0, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendto) { return zt_data_enter(args, args->fd, ZT_SYS_SENDTO, (__u64)args->buff, 0, (__u64)args->addr, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_recvfrom) { return zt_data_enter(args, args->fd, ZT_SYS_RECVFROM, (__u64)args->ubuf, 0, (__u64)args->addr, args->flags); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendmsg) { return zt_data_enter(args, args->fd, ZT_SYS_SENDMSG, (__u64)args->msg, 0, 0, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_recvmsg) { return zt_data_enter(args, args->fd, ZT_SYS_RECVMSG, (__u64)args->msg, 0, 0, args->flags); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendmmsg) { return zt_data_enter(args, args->fd, ZT_SYS_SENDMMSG, (__u64)args->mmsg, args->vlen, 0, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_recvmmsg) { return zt_data_enter(args, args->fd, ZT_SYS_RECVMMSG, (__u64)args->mmsg, args->vlen, 0, args->flags); }

/* One exit program for every data syscall: the syscall is known from the in-flight slot
 * its entry wrote, and all sys_exit_* records are alike (ret at the same offset). */
TRACEPOINT_PROBE(syscalls, sys_exit_read) { return zt_data_exit(args->ret); }
ZT_ATTACH_ALSO(syscalls, sys_exit_read, sys_exit_write)
ZT_ATTACH_ALSO(syscalls, sys_exit_read, sys_exit_readv)
ZT_ATTACH_ALSO(syscalls, sys_exit_read, sys_exit_writev)
ZT_ATTACH_ALSO(syscalls, sys_exit_read, sys_exit_sendto)
ZT_ATTACH_ALSO(syscalls, sys_exit_read, sys_exit_recvfrom)
ZT_ATTACH_ALSO(syscalls, sys_exit_read, sys_exit_sendmsg)
ZT_ATTACH_ALSO(syscalls, sys_exit_read, sys_exit_recvmsg)
ZT_ATTACH_ALSO(syscalls, sys_exit_read, sys_exit_sendmmsg)
ZT_ATTACH_ALSO(syscalls, sys_exit_read, sys_exit_recvmmsg)
