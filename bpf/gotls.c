/* TLS plaintext of Go's crypto/tls (Go >= 1.17 on amd64: the register ABI, arguments
 * in RAX, RBX, RCX, ..., results in RAX, RBX, ..., the current g in R14).  Included by
 * tls.c, whose tls_socks, mark and emission it shares.
 *
 * Uprobes, attached per Go binary by agent/probes/gotls.py:
 *   (*Conn).Write(c, b) / (*Conn).Read(c, b)   entry: the call, keyed by (tgid, g)
 *     (a goroutine may park in the call and resume on another thread); Write's
 *     plaintext is emitted here, before its ciphertext leaves (the answer, read by
 *     another goroutine, may come back before Write returns)
 *     (entries at the stack check's jump when the prologue has one: zt_gotls_*_sc)
 *   each RET instruction of Read (and of Write when its entry is at offset 0)
 *     Read: the result n in RAX, n plaintext bytes; Write: the end of the call (an
 *     entry run again by a stack-growing prologue is then told from a new Write).
 *     Never a uretprobe on Go: it rewrites
 *     the return address on a stack that the runtime moves when it grows, and
 *     crashes the program
 *   (*Conn).clientHandshake / serverHandshake(c, ...) entry   a handshake starts: the
 *     socket is TLS, marked before the handshake's ciphertext (not handshakeContext:
 *     Read and Write call it every time, a trap each)
 * The socket: c.conn (net.Conn interface: itab, data) must be a *net.TCPConn (its itab
 * address is checked: another Conn type's fields would name another fd); then
 * TCPConn.conn.fd (*netFD) -> pfd.Sysfd, the fd, -> struct sock as data.c does.  Struct
 * offsets come from the binary's DWARF, per process (gotls_procs) and, for non-PIE
 * executables, per probed address (gotls_addrs).
 *
 * Virtual seqs as for OpenSSL (tls.c): the base of a direction is the TCP seq of the
 * first ciphertext record that carried plaintext.  Egress: write_seq at the first
 * Write's entry (a completed handshake leaves nothing buffered in c.sendBuf, so its
 * first record starts there).  Ingress: at the RET of the first Read that returns
 * plaintext, the record just consumed (zt_gotls_record_seq; a TLS 1.3 client reads the
 * server's session tickets before it).  Both ends name the same record's seq: exact
 * links, or none.
 *
 * Ciphertext: data.c emits the socket's syscalls; the TLS syscall program (tls.c) skips
 * those of sockets marked here (go=1, same process and ports), counted as skipped. */

struct zt_gotls_offsets {
    __u64 itab;          /* address of go.itab.*net.TCPConn,net.Conn in the process */
    __u32 conn_conn;     /* crypto/tls.Conn.conn (an interface: itab, data) */
    __u32 tcpconn_fd;    /* net.TCPConn.conn.fd (*net.netFD) */
    __u32 netfd_sysfd;   /* net.netFD.pfd.Sysfd */
    __u32 conn_rawinput; /* crypto/tls.Conn.rawInput (bytes.Buffer) */
    __u32 buffer_len;    /* bytes.Buffer.buf's len */
    __u32 buffer_ptr;    /* bytes.Buffer.buf's data pointer */
    __u32 buffer_off;    /* bytes.Buffer.off */
    __u32 conn_hs;       /* handshakeStatus / isHandshakeComplete (uint32, 1 = done) */
    __u32 input_len;     /* crypto/tls.Conn.input (bytes.Reader) .s's len */
    __u32 input_i;       /* ... .i: bytes of the record's plaintext read so far */
};

struct zt_gotls_key {
    __u64 g;
    __u32 tgid;
    __u32 _pad;
};

struct zt_gotls_call {
    __u64 ts_enter;
    __u64 conn;          /* the *tls.Conn */
    __u64 buf;
    __u64 len;
    struct zt_active act;
    struct zt_gotls_offsets o; /* for the RET */
    __u32 wseq;          /* Write: write_seq at entry */
    __u8 kind;           /* ZT_TLS_WRITE, ZT_TLS_READ */
    __u8 have_wseq;
};

BPF_HASH(gotls_procs, __u32, struct zt_gotls_offsets, 1024);
/* The same by the probed function's address, for non-PIE executables (the usual Go
 * build): a process started after the last scan is traced from its first call (the
 * uprobe is the file's; at a uprobe, the instruction pointer is the probed address). */
BPF_HASH(gotls_addrs, __u64, struct zt_gotls_offsets, 4096);
BPF_TABLE("lru_hash", struct zt_gotls_key, struct zt_gotls_call, gotls_calls, 16384);
/* slot 0: some Go process is traced (the syscall program looks Go sockets up then) */
BPF_ARRAY(gotls_on, __u32, 1);

/* The socket behind a *tls.Conn, into *act; 0 when it is no TCP socket we follow. */
static __always_inline int zt_gotls_sock(struct zt_gotls_offsets *o, __u64 conn,
                                         struct zt_active *act)
{
    __u64 iface[2] = {};
    if (bpf_probe_read_user(iface, sizeof(iface), (void *)(conn + o->conn_conn)) != 0)
        return 0;
    if (!o->itab || iface[0] != o->itab || !iface[1])
        return 0; /* not a *net.TCPConn: its fields are not where we look */
    __u64 netfd = 0;
    __s64 fd = -1;
    if (bpf_probe_read_user(&netfd, sizeof(netfd), (void *)(iface[1] + o->tcpconn_fd)) != 0 ||
        !netfd)
        return 0;
    if (bpf_probe_read_user(&fd, sizeof(fd), (void *)(netfd + o->netfd_sysfd)) != 0 ||
        fd < 0 || fd > 0x7fffffff)
        return 0;
    __u64 sk = zt_fd_to_sock((int)fd);
    if (!sk)
        return 0;
    __u8 family = 0, transport = 0;
    __u16 lport = 0, rport = 0;
    if (!zt_sock_basics(sk, &family, &transport, &lport, &rport) ||
        transport != ZT_IPPROTO_TCP)
        return 0;
    struct zt_config *cfg = zt_cfg();
    if (!cfg || !zt_sock_wanted(cfg, sk, lport, rport))
        return 0;
    act->sk = sk;
    act->fd = (int)fd;
    act->family = family;
    act->transport = transport;
    act->lport = lport;
    act->rport = rport;
    return 1;
}

/* The socket's tls_socks entry, made (and the mark emitted) when it is new, or when the
 * entry belongs to another connection at the same address, or on a handshake after
 * plaintext moved (the address of a closed connection reused). */
static __always_inline struct zt_tls_sock *zt_gotls_sock_state(struct zt_active *act,
                                                               int handshake)
{
    __u64 sk = act->sk;
    __u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct zt_tls_sock *ts = tls_socks.lookup(&sk);
    if (ts && ts->go && ts->tgid == tgid && ts->lport == act->lport &&
        ts->rport == act->rport && !(handshake && (ts->moved[0] || ts->moved[1])))
        return ts;
    struct zt_tls_sock z = {};
    z.go = 1;
    z.tgid = tgid;
    z.lport = act->lport;
    z.rport = act->rport;
    tls_socks.update(&sk, &z);
    zt_tls_mark(act);
    return tls_socks.lookup(&sk);
}

static __always_inline struct zt_gotls_offsets *zt_gotls_wanted(struct pt_regs *ctx)
{
    struct zt_config *cfg = zt_cfg();
    __u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!cfg || !zt_task_wanted(cfg, tgid))
        return 0;
    struct zt_gotls_offsets *o = gotls_procs.lookup(&tgid);
    if (o)
        return o;
    __u64 ip = PT_REGS_IP(ctx);
    return gotls_addrs.lookup(&ip);
}

static __always_inline int zt_gotls_enter(struct pt_regs *ctx, __u8 kind, int once)
{
    struct zt_gotls_offsets *o = zt_gotls_wanted(ctx);
    if (!o)
        return 0;
    struct zt_gotls_call c = {};
    c.o = *o;
    c.conn = ctx->ax;
    if (!c.conn || !zt_gotls_sock(o, c.conn, &c.act))
        return 0;
    struct zt_tls_sock *ts = zt_gotls_sock_state(&c.act, 0);
    if (!ts)
        return 0;
    c.ts_enter = bpf_ktime_get_ns();
    c.kind = kind;
    c.buf = ctx->bx;
    c.len = ctx->cx;
    if (kind == ZT_TLS_WRITE && !ts->have_base[ZT_DIR_EGRESS]) {
        /* a Write that must run the handshake first writes its records before ours */
        __u32 hs = 0;
        bpf_probe_read_user(&hs, sizeof(hs), (void *)(c.conn + o->conn_hs));
        if (hs == 1) {
            ZT_READ(c.wseq, c.act.sk, OFF_TCP_WRITE_SEQ);
            c.have_wseq = 1;
        }
    }
    struct zt_gotls_key k = {.g = ctx->r14, .tgid = bpf_get_current_pid_tgid() >> 32};
    if (kind == ZT_TLS_WRITE) {
        /* At offset 0, a prologue that grows the stack runs the entry again (same g,
         * same arguments, no RET between): not a second Write; the RETs end the call.
         * At the stack check's jump (once) the pass that grows the stack was skipped:
         * nothing to remember, and Write has no RET probes. */
        if (!once) {
            struct zt_gotls_call *prev = gotls_calls.lookup(&k);
            if (prev && prev->kind == ZT_TLS_WRITE && prev->conn == c.conn &&
                prev->buf == c.buf && prev->len == c.len)
                return 0;
            gotls_calls.update(&k, &c);
        }
        /* Emitted now, before the ciphertext leaves: the peer's answer, read on another
         * goroutine, may return before this Write does, and the agent takes a
         * connection's events in ring order.  Go's Write writes all of b or fails (the
         * connection is then dead, and a seq gap only unlinks what follows). */
        if (c.len && c.len < (1ULL << 31))
            zt_tls_emit(ts, &c.act, c.ts_enter, c.buf, c.len, ZT_DIR_EGRESS,
                        c.have_wseq ? c.wseq : bpf_get_prandom_u32());
        return 0;
    }
    gotls_calls.update(&k, &c);
    return 0;
}

int zt_gotls_write(struct pt_regs *ctx) { return zt_gotls_enter(ctx, ZT_TLS_WRITE, 0); }
int zt_gotls_read(struct pt_regs *ctx) { return zt_gotls_enter(ctx, ZT_TLS_READ, 0); }

/* The same at the conditional jump of the prologue's stack check (agent/probes/gotls.py
 * stack_check_jump: [lea -X(%rsp),%r12;] cmp 0x10(%r14),%rsp|%r12; jbe morestack): an
 * instruction the kernel emulates, where a probe on the cmp at offset 0 is single-
 * stepped (a debug trap; on a VM ~10x the cost).  The jump's flags are the cmp's: CF
 * or ZF set, it is taken, the stack grows and the function starts again (that pass is
 * skipped: every call is seen once).  The arguments and g are still in their registers
 * (the lea writes R12 only). */
#define ZT_X86_CF 0x1
#define ZT_X86_ZF 0x40
static __always_inline int zt_gotls_grows(struct pt_regs *ctx)
{
    return (ctx->flags & (ZT_X86_CF | ZT_X86_ZF)) != 0;
}
int zt_gotls_write_sc(struct pt_regs *ctx)
{
    return zt_gotls_grows(ctx) ? 0 : zt_gotls_enter(ctx, ZT_TLS_WRITE, 1);
}
int zt_gotls_read_sc(struct pt_regs *ctx)
{
    return zt_gotls_grows(ctx) ? 0 : zt_gotls_enter(ctx, ZT_TLS_READ, 1);
}

/* At the RET of the first Read that returned plaintext on a connection: the TCP seq of
 * the record that carried it.  Read stops after the record that gave it plaintext, so
 * that record ends where the bytes read from the socket and not consumed begin:
 * copied_seq - rawInput.Len().  Its length is 5 + its plaintext (n + what c.input still
 * holds) + the cipher's overhead: 17 (TLS 1.3 AEAD: content type, tag), 24 (TLS 1.2
 * AES-GCM: explicit nonce, tag) or 16 (TLS 1.2 ChaCha20-Poly1305); a candidate counts
 * only when the record header found at that distance back in rawInput's buffer (left
 * there: Go decrypts the payload in place, the header stays) says application data of
 * exactly that length.  None fits (a padded record, a CBC suite, an alert read after
 * the data): a random base, which matches nothing. */
static __always_inline __u32 zt_gotls_record_seq(struct zt_gotls_call *c, __u64 n)
{
    struct zt_gotls_offsets *o = &c->o;
    __u64 raw = c->conn + o->conn_rawinput, ptr = 0;
    __s64 blen = 0, off = 0, ilen = 0, ii = 0;
    if (bpf_probe_read_user(&ptr, sizeof(ptr), (void *)(raw + o->buffer_ptr)) != 0 ||
        bpf_probe_read_user(&blen, sizeof(blen), (void *)(raw + o->buffer_len)) != 0 ||
        bpf_probe_read_user(&off, sizeof(off), (void *)(raw + o->buffer_off)) != 0 ||
        bpf_probe_read_user(&ilen, sizeof(ilen), (void *)(c->conn + o->input_len)) != 0 ||
        bpf_probe_read_user(&ii, sizeof(ii), (void *)(c->conn + o->input_i)) != 0)
        return bpf_get_prandom_u32();
    if (off < 0 || blen < off || blen > (1 << 30) || ii < 0 || ilen < ii || ilen > (1 << 20))
        return bpf_get_prandom_u32();
    __u32 copied = 0;
    ZT_READ(copied, c->act.sk, OFF_TCP_COPIED_SEQ);
    __u32 end = copied - (__u32)(blen - off);
    __u64 plain = n + (__u64)(ilen - ii);
    __u32 overheads[3] = {17, 24, 16};
#pragma unroll
    for (int k = 0; k < 3; k++) {
        __u64 len = 5 + plain + overheads[k];
        if (len > (__u64)off)
            continue;
        __u8 h[5] = {};
        if (bpf_probe_read_user(h, sizeof(h), (void *)(ptr + off - len)) != 0)
            continue;
        if (h[0] == 23 && h[1] == 3 && h[2] == 3 && (((__u64)h[3] << 8) | h[4]) == len - 5)
            return end - (__u32)len;
    }
    return bpf_get_prandom_u32();
}

/* At every RET of Write and Read: n (RAX) bytes moved. */
int zt_gotls_ret(struct pt_regs *ctx)
{
    struct zt_gotls_key k = {.g = ctx->r14, .tgid = bpf_get_current_pid_tgid() >> 32};
    struct zt_gotls_call *cp = gotls_calls.lookup(&k);
    if (!cp)
        return 0;
    struct zt_gotls_call c = *cp;
    gotls_calls.delete(&k);
    if (c.kind != ZT_TLS_READ) /* a Write: emitted at entry; its state ends here */
        return 0;
    __s64 n = (__s64)ctx->ax;
    if (n <= 0 || (__u64)n > c.len)
        return 0;
    __u64 sk = c.act.sk;
    struct zt_tls_sock *ts = tls_socks.lookup(&sk);
    if (!ts || !ts->go)
        return 0;
    __u32 base = ts->have_base[ZT_DIR_INGRESS] ? 0 : zt_gotls_record_seq(&c, n);
    zt_tls_emit(ts, &c.act, c.ts_enter, c.buf, n, ZT_DIR_INGRESS, base);
    return 0;
}

/* clientHandshake / serverHandshake(c, ...): the socket is TLS from here on */
static __always_inline int zt_gotls_handshake_at(struct pt_regs *ctx)
{
    struct zt_gotls_offsets *o = zt_gotls_wanted(ctx);
    if (!o || !ctx->ax)
        return 0;
    struct zt_active act = {};
    if (!zt_gotls_sock(o, ctx->ax, &act))
        return 0;
    zt_gotls_sock_state(&act, 1); /* a new connection, maybe at a reused address */
    return 0;
}
int zt_gotls_handshake(struct pt_regs *ctx) { return zt_gotls_handshake_at(ctx); }
int zt_gotls_handshake_sc(struct pt_regs *ctx)
{
    return zt_gotls_grows(ctx) ? 0 : zt_gotls_handshake_at(ctx);
}

/* From tls.c's syscall program, outside SSL calls: 1 when a's socket is a Go TLS
 * socket of this process, whose ciphertext is then not emitted. */
static __always_inline int zt_gotls_sys_enter(struct zt_active *a)
{
    int zero = 0;
    __u32 *on = gotls_on.lookup(&zero);
    if (!on || !*on)
        return 0;
    __u64 sk = a->sk;
    struct zt_tls_sock *ts = tls_socks.lookup(&sk);
    if (!ts || !ts->go || ts->tgid != bpf_get_current_pid_tgid() >> 32 ||
        ts->lport != a->lport || ts->rport != a->rport)
        return 0;
    a->busy = 0;
    __u64 *n = tls_cipher_skipped.lookup(&zero);
    if (n)
        *n += 1;
    return 0;
}
