/* Connection life: connect, accept/accept4 (role and base sequence numbers), close, and
 * sock:inet_sock_set_state for TCP closes that no close() of ours saw. */

static __always_inline void zt_forget_skips(__u64 sk)
{
    __u64 k = sk | ZT_DIR_EGRESS;
    skips.delete(&k);
    k = sk | ZT_DIR_INGRESS;
    skips.delete(&k);
}

static __always_inline void zt_emit_conn(struct zt_active *a, __u64 id, long ret, __u8 sys,
                                         __u64 sk, __u8 role)
{
    struct zt_config *cfg = zt_cfg();
    int zero = 0;
    struct zt_scratch *s = scratch.lookup(&zero);
    if (!cfg || !s)
        return;
    struct zt_active c = *a;
    c.sk = sk;
    c.sys = sys;
    if (!zt_sock_basics(sk, &c.family, &c.transport, &c.lport, &c.rport))
        return;
    if (!zt_sock_wanted(cfg, sk, c.lport, c.rport))
        return;
    zt_fill(&s->ev, &c, id, ret, bpf_ktime_get_ns(), cfg);
    s->ev.type = ZT_EV_CONN;
    s->ev.direction = 0;
    s->ev.seq = 0;
    s->ev.offset = 0;
    s->ev.role = role;
    if (c.transport == ZT_IPPROTO_TCP && role != ZT_ROLE_UNKNOWN) {
        /* Base sequence numbers: nothing has been written or read on a socket that
         * connect/accept has just returned, so these are the first bytes' seqs. */
        __u32 copied = 0;
        ZT_READ(s->ev.seq, sk, OFF_TCP_WRITE_SEQ);
        ZT_READ(copied, sk, OFF_TCP_COPIED_SEQ);
        s->ev.offset = copied;
        s->ev.flags |= ZT_F_HAS_SEQ;
        /* sampling (data.c zt_sample): the first request starts an exchange */
        struct zt_sockstate st = {.role = role, .gen = cfg->shed_gen,
                                  .last_dir = role == ZT_ROLE_CLIENT ? ZT_DIR_INGRESS
                                                                     : ZT_DIR_EGRESS};
        socks.update(&sk, &st);
        zt_forget_skips(sk); /* a new connection at an address a hint may still name */
    }
    zt_submit(s, sizeof(struct zt_event), cfg);
}

static __always_inline int zt_conn_enter(int fd, __u8 sys)
{
    __u64 id = bpf_get_current_pid_tgid();
    struct zt_config *cfg = zt_cfg();
    if (!cfg || !zt_task_wanted(cfg, id >> 32))
        return 0;
    __u64 sk = 0;
    if (sys == ZT_SYS_CONNECT) {
        sk = zt_fd_to_sock(fd);
        if (!sk)
            return 0;
    }
    struct zt_active *a = zt_active_get(1);
    if (!a) {
        zt_count_drop(ZT_DROP_ACTIVE_FULL);
        return 0;
    }
    a->ts_enter = bpf_ktime_get_ns();
    a->fd = fd;
    a->sys = sys;
    a->sk = sk;
    a->busy = 1;
    return 0;
}

static __always_inline int zt_conn_exit(long ret)
{
    __u64 id = bpf_get_current_pid_tgid();
    struct zt_active a;
    if (!zt_active_take(&a))
        return 0;
    if (a.sys == ZT_SYS_CONNECT) {
        if (ret != 0 && ret != -ZT_EINPROGRESS)
            return 0;
        zt_emit_conn(&a, id, ret, a.sys, a.sk, ZT_ROLE_CLIENT);
        return 0;
    }
    /* accept / accept4: ret is the new fd */
    if (ret < 0)
        return 0;
    __u64 sk = zt_fd_to_sock(ret);
    if (!sk)
        return 0;
    a.fd = ret;
    zt_emit_conn(&a, id, ret, a.sys, sk, ZT_ROLE_SERVER);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_connect) { return zt_conn_enter(args->fd, ZT_SYS_CONNECT); }
TRACEPOINT_PROBE(syscalls, sys_enter_accept) { return zt_conn_enter(args->fd, ZT_SYS_ACCEPT); }
TRACEPOINT_PROBE(syscalls, sys_enter_accept4) { return zt_conn_enter(args->fd, ZT_SYS_ACCEPT4); }
/* One exit program for the three, as for the data syscalls (data.c). */
TRACEPOINT_PROBE(syscalls, sys_exit_connect) { return zt_conn_exit(args->ret); }
ZT_ATTACH_ALSO(syscalls, sys_exit_connect, sys_exit_accept)
ZT_ATTACH_ALSO(syscalls, sys_exit_connect, sys_exit_accept4)

TRACEPOINT_PROBE(syscalls, sys_enter_close)
{
    __u64 id = bpf_get_current_pid_tgid();
    struct zt_config *cfg = zt_cfg();
    if (!cfg || !zt_task_wanted(cfg, id >> 32))
        return 0;
    void *file = 0;
    __u64 sk = zt_fd_to_sock_file(args->fd, &file);
    __u8 family = 0, transport = 0;
    __u16 lport = 0, rport = 0;
    if (!sk || !zt_sock_basics(sk, &family, &transport, &lport, &rport))
        return 0;
    if (!zt_last_reference(file))
        return 0; /* another fd or process still holds the socket */
    struct zt_sockstate *st = socks.lookup(&sk);
    if (st)
        zt_shed_answered(st); /* a shed request never answered: no longer open */
    if (st && st->role == ZT_ROLE_UNKNOWN)
        socks.delete(&sk); /* a sampling entry (data.c): no TCP close record needs it */
    if (cfg->skip_hints)
        zt_forget_skips(sk);
    struct zt_active a = {};
    a.ts_enter = bpf_ktime_get_ns();
    a.fd = args->fd;
    zt_emit_conn(&a, id, 0, ZT_SYS_CLOSE, sk, ZT_ROLE_UNKNOWN);
    return 0;
}

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol != ZT_IPPROTO_TCP)
        return 0;
    struct zt_config *cfg = zt_cfg();
    if (!cfg || !cfg->enabled)
        return 0;
    __u64 sk = (__u64)args->skaddr;
    if (args->newstate == ZT_TCP_LISTEN || args->oldstate == ZT_TCP_LISTEN) {
        /* A connection's socket is cloned from its listener, state and all, and set to
         * SYN_RECV: LISTEN -> SYN_RECV is an accept under way, not the listener going
         * (until this, every accept took its port out of the map).  Only LISTEN ->
         * CLOSE is. */
        if (args->oldstate == ZT_TCP_LISTEN && args->newstate != ZT_TCP_CLOSE)
            return 0;
        struct zt_listen_key k = {.netns = zt_sock_netns(sk), .port = args->sport};
        __u8 one = 1;
        if (args->newstate == ZT_TCP_LISTEN)
            listening.update(&k, &one);
        else /* SO_REUSEPORT: another socket may still listen; unknown role is safe */
            listening.delete(&k);
        return 0;
    }
    if (args->newstate == ZT_TCP_CLOSE) {
        struct zt_sockstate *st = socks.lookup(&sk);
        if (!st)
            return 0;
        __u8 role = st->role;
        zt_shed_answered(st);
        socks.delete(&sk);
        if (role == ZT_ROLE_UNKNOWN)
            return 0; /* a sampling entry (data.c), not a connection the agent was told of */
        /* Tell the agent even when no close() of ours saw it (killed process, RST). */
        int zero = 0;
        struct zt_scratch *s = scratch.lookup(&zero);
        if (!s)
            return 0;
        __builtin_memset(&s->ev, 0, sizeof(s->ev));
        s->ev.type = ZT_EV_CONN;
        s->ev.syscall = ZT_SYS_STATE_CLOSE;
        s->ev.sock_id = sk;
        s->ev.ts_enter = s->ev.ts_exit = bpf_ktime_get_ns();
        s->ev.family = args->family;
        s->ev.transport = ZT_IPPROTO_TCP;
        s->ev.lport = args->sport;
        s->ev.rport = args->dport;
        s->ev.role = role;
        if (args->family == ZT_AF_INET) {
            __builtin_memcpy(s->ev.laddr, args->saddr, 4);
            __builtin_memcpy(s->ev.raddr, args->daddr, 4);
        } else {
            __builtin_memcpy(s->ev.laddr, args->saddr_v6, 16);
            __builtin_memcpy(s->ev.raddr, args->daddr_v6, 16);
        }
        zt_submit(s, sizeof(struct zt_event), cfg);
    }
    return 0;
}
