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

/* Socket-level filters; 1 when this inet socket is to be traced. */
static __always_inline int zt_sock_wanted(struct zt_config *cfg, __u64 sk, __u16 lport, __u16 rport)
{
    if (cfg->filter_port && !filter_ports.lookup(&lport) && !filter_ports.lookup(&rport))
        return 0;
    if (cfg->filter_netns) {
        __u32 ns = zt_sock_netns(sk);
        if (!filter_netns.lookup(&ns))
            return 0;
    }
    return 1;
}

static __always_inline int zt_is_egress(__u8 sys)
{
    return sys == ZT_SYS_WRITE || sys == ZT_SYS_WRITEV || sys == ZT_SYS_SENDTO ||
           sys == ZT_SYS_SENDMSG || sys == ZT_SYS_SENDMMSG;
}

static __always_inline int zt_data_enter(int fd, __u8 sys, __u64 buf, __u64 count, __u64 addr,
                                         __u64 msg_flags)
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
    __u8 family = 0, transport = 0;
    __u16 lport = 0, rport = 0;
    if (!zt_sock_basics(sk, &family, &transport, &lport, &rport))
        return 0;
    if (!zt_sock_wanted(cfg, sk, lport, rport))
        return 0;

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
    if (transport == ZT_IPPROTO_TCP) {
        if (zt_is_egress(sys))
            ZT_READ(a->seq, sk, OFF_TCP_WRITE_SEQ);
        else
            ZT_READ(a->seq, sk, OFF_TCP_COPIED_SEQ);
        a->has_seq = 1;
    }
    a->busy = 1;
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
    if (a->transport == ZT_IPPROTO_UDP && !a->lport) /* bound by this very sendto */
        ZT_READ(ev->lport, a->sk, OFF_SK_NUM);
    ev->rport = a->rport;
    ev->role = ZT_ROLE_UNKNOWN;
    ev->offset = 0;
    __builtin_memset(ev->laddr, 0, 16);
    __builtin_memset(ev->raddr, 0, 16);
    zt_sock_addrs(a->sk, ev->family, ev);
    ev->netns = zt_sock_netns(a->sk);
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
    zt_submit(s, sizeof(struct zt_event) + captured, cfg);
}

/* One message of sendmsg/recvmsg/…mmsg: payload from its iovecs, peer from msg_name. */
static __always_inline void zt_emit_msghdr(struct zt_scratch *s, struct zt_config *cfg,
                                           struct zt_active *a, __u64 msg, __u64 len,
                                           __u32 seq_delta, const int max_iov)
{
    __u64 name = 0, iov = 0, iovlen = 0;
    bpf_probe_read_user(&name, sizeof(name), (void *)msg);
    bpf_probe_read_user(&iov, sizeof(iov), (void *)(msg + 16));
    bpf_probe_read_user(&iovlen, sizeof(iovlen), (void *)(msg + 24));
    __u64 want = len < ZT_PAYLOAD_MAX ? len : ZT_PAYLOAD_MAX;
    s->ev.captured = zt_copy_iov(s->payload, iov, iovlen, want, max_iov);
    /* per message: the previous message of the same sendmmsg/recvmmsg set them */
    s->ev.flags &= ~(ZT_F_PEER_FROM_MSG | ZT_F_TRUNCATED);
    if (s->ev.transport == ZT_IPPROTO_UDP && name)
        zt_user_peer((void *)name, &s->ev);
    zt_emit_data(s, cfg, a, len, seq_delta);
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
    zt_fill(&s->ev, &a, id, ret, bpf_ktime_get_ns(), cfg);

    if (a.sys == ZT_SYS_SENDMMSG || a.sys == ZT_SYS_RECVMMSG) {
        /* ret = messages moved; each struct mmsghdr is a user_msghdr + msg_len (64 bytes). */
        __u32 seq_delta = 0;
        for (int i = 0; i < ZT_MMSG_MAX; i++) {
            if (i >= ret)
                break;
            __u64 m = a.buf + i * 64;
            __u32 mlen = 0;
            bpf_probe_read_user(&mlen, sizeof(mlen), (void *)(m + 56));
            zt_emit_msghdr(s, cfg, &a, m, mlen, seq_delta, ZT_MMSG_IOV_MAX);
            seq_delta += mlen;
        }
        return 0;
    }
    /* One copy loop serves readv/writev and sendmsg/recvmsg (their iovecs are named by
     * the user_msghdr): the verifier walks each copy of a loop, iteration by iteration. */
    __u64 want = ret < ZT_PAYLOAD_MAX ? ret : ZT_PAYLOAD_MAX;
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
    } else {
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

TRACEPOINT_PROBE(syscalls, sys_enter_write) { return zt_data_enter(args->fd, ZT_SYS_WRITE, (__u64)args->buf, 0, 0, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_read) { return zt_data_enter(args->fd, ZT_SYS_READ, (__u64)args->buf, 0, 0, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_writev) { return zt_data_enter(args->fd, ZT_SYS_WRITEV, (__u64)args->vec, args->vlen, 0, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_readv) { return zt_data_enter(args->fd, ZT_SYS_READV, (__u64)args->vec, args->vlen, 0, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendto) { return zt_data_enter(args->fd, ZT_SYS_SENDTO, (__u64)args->buff, 0, (__u64)args->addr, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_recvfrom) { return zt_data_enter(args->fd, ZT_SYS_RECVFROM, (__u64)args->ubuf, 0, (__u64)args->addr, args->flags); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendmsg) { return zt_data_enter(args->fd, ZT_SYS_SENDMSG, (__u64)args->msg, 0, 0, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_recvmsg) { return zt_data_enter(args->fd, ZT_SYS_RECVMSG, (__u64)args->msg, 0, 0, args->flags); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendmmsg) { return zt_data_enter(args->fd, ZT_SYS_SENDMMSG, (__u64)args->mmsg, args->vlen, 0, 0); }
TRACEPOINT_PROBE(syscalls, sys_enter_recvmmsg) { return zt_data_enter(args->fd, ZT_SYS_RECVMMSG, (__u64)args->mmsg, args->vlen, 0, args->flags); }

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
