/* Connection life: connect, accept/accept4, close, and sock:inet_sock_set_state for the
 * role (client/server) and for dropping per-connection state when TCP closes. */

static __always_inline void zt_emit_conn(struct zt_active *a, __u64 id, long ret, __u8 sys,
                                         __u64 sk)
{
    struct zt_config *cfg = zt_cfg();
    int zero = 0;
    struct zt_scratch *s = scratch.lookup(&zero);
    if (!cfg || !s)
        return;
    struct zt_active c = *a;
    c.sk = sk;
    c.sys = sys;
    zt_fill(&s->ev, &c, id, ret, bpf_ktime_get_ns());
    if (!zt_sock_wanted(cfg, sk, s->ev.lport, s->ev.rport))
        return;
    s->ev.type = ZT_EV_CONN;
    s->ev.direction = 0;
    s->ev.seq = 0;
    s->ev.offset = 0;
    struct zt_sockstate *st = socks.lookup(&sk);
    s->ev.role = ZT_ROLE_UNKNOWN;
    if (st) {
        s->ev.role = st->role;
        st->seen = 1;
    }
    zt_submit(s, sizeof(struct zt_event), cfg);
}

static __always_inline int zt_conn_enter(int fd, __u8 sys)
{
    __u64 id = bpf_get_current_pid_tgid();
    __u32 tid = (__u32)id;
    struct zt_config *cfg = zt_cfg();
    if (!cfg || !zt_task_wanted(cfg, id >> 32))
        return 0;
    struct zt_active a = {};
    a.ts_enter = bpf_ktime_get_ns();
    a.fd = fd;
    a.sys = sys;
    if (sys == ZT_SYS_CONNECT) {
        a.sk = zt_fd_to_sock(fd);
        if (!a.sk)
            return 0;
    }
    if (active.update(&tid, &a) != 0)
        zt_count_drop(ZT_DROP_ACTIVE_FULL);
    return 0;
}

static __always_inline void zt_set_role(__u64 sk, __u8 role)
{
    struct zt_sockstate *st = socks.lookup(&sk);
    if (st) {
        st->role = role;
        return;
    }
    struct zt_sockstate fresh = {};
    fresh.role = role;
    socks.update(&sk, &fresh);
}

static __always_inline int zt_conn_exit(long ret)
{
    __u64 id = bpf_get_current_pid_tgid();
    __u32 tid = (__u32)id;
    struct zt_active *ap = active.lookup(&tid);
    if (!ap)
        return 0;
    struct zt_active a = *ap;
    active.delete(&tid);
    __u8 family = 0, transport = 0;
    __u16 lport = 0, rport = 0;
    if (a.sys == ZT_SYS_CONNECT) {
        if (ret != 0 && ret != -ZT_EINPROGRESS)
            return 0;
        if (!zt_sock_basics(a.sk, &family, &transport, &lport, &rport))
            return 0;
        if (transport == ZT_IPPROTO_TCP)
            zt_set_role(a.sk, ZT_ROLE_CLIENT);
        zt_emit_conn(&a, id, ret, a.sys, a.sk);
        return 0;
    }
    /* accept / accept4: ret is the new fd */
    if (ret < 0)
        return 0;
    __u64 sk = zt_fd_to_sock(ret);
    if (!sk || !zt_sock_basics(sk, &family, &transport, &lport, &rport))
        return 0;
    zt_set_role(sk, ZT_ROLE_SERVER);
    a.fd = ret;
    zt_emit_conn(&a, id, ret, a.sys, sk);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_connect) { return zt_conn_enter(args->fd, ZT_SYS_CONNECT); }
TRACEPOINT_PROBE(syscalls, sys_exit_connect) { return zt_conn_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_accept) { return zt_conn_enter(args->fd, ZT_SYS_ACCEPT); }
TRACEPOINT_PROBE(syscalls, sys_exit_accept) { return zt_conn_exit(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_accept4) { return zt_conn_enter(args->fd, ZT_SYS_ACCEPT4); }
TRACEPOINT_PROBE(syscalls, sys_exit_accept4) { return zt_conn_exit(args->ret); }

TRACEPOINT_PROBE(syscalls, sys_enter_close)
{
    __u64 id = bpf_get_current_pid_tgid();
    struct zt_config *cfg = zt_cfg();
    if (!cfg || !zt_task_wanted(cfg, id >> 32))
        return 0;
    __u64 sk = zt_fd_to_sock(args->fd);
    __u8 family = 0, transport = 0;
    __u16 lport = 0, rport = 0;
    if (!sk || !zt_sock_basics(sk, &family, &transport, &lport, &rport))
        return 0;
    struct zt_active a = {};
    a.ts_enter = bpf_ktime_get_ns();
    a.fd = args->fd;
    zt_emit_conn(&a, id, 0, ZT_SYS_CLOSE, sk);
    if (transport == ZT_IPPROTO_UDP) /* no state change will tell us it is gone */
        socks.delete(&sk);
    return 0;
}

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol != ZT_IPPROTO_TCP)
        return 0;
    __u64 sk = (__u64)args->skaddr;
    if (args->newstate == ZT_TCP_SYN_SENT) {
        struct zt_sockstate fresh = {};
        fresh.role = ZT_ROLE_CLIENT;
        socks.update(&sk, &fresh);
    } else if (args->newstate == ZT_TCP_SYN_RECV) {
        struct zt_sockstate fresh = {};
        fresh.role = ZT_ROLE_SERVER;
        socks.update(&sk, &fresh);
    } else if (args->newstate == ZT_TCP_CLOSE) {
        struct zt_sockstate *st = socks.lookup(&sk);
        if (!st)
            return 0;
        __u8 seen = st->seen;
        socks.delete(&sk);
        if (!seen)
            return 0;
        /* Tell the agent even when no close() of ours saw it (killed process, RST). */
        struct zt_config *cfg = zt_cfg();
        int zero = 0;
        struct zt_scratch *s = scratch.lookup(&zero);
        if (!cfg || !s)
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
