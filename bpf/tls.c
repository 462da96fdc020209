/* TLS plaintext of dynamically linked OpenSSL 1.1/3 (libssl.so): uprobes on SSL_write,
 * SSL_write_ex, SSL_read, SSL_read_ex and SSL_do_handshake (entry and return), or, for
 * read and write, on the internal function each pair of wrappers calls when the agent
 * proved it (agent/probes/tls.py inner_functions: an instruction the kernel emulates,
 * ~10x cheaper a hit on a VM than one it single-steps).
 *
 * The socket is not read from the SSL object (its layout changes between OpenSSL
 * versions): while a thread is inside an SSL call, a program on the data syscalls'
 * enter tracepoints (attached after data.c's, so the in-flight slot `active` already
 * holds this syscall's socket and TCP seq) notes the socket and the TCP seqs of the
 * ciphertext the call moves.  At the call's return the plaintext is emitted as a data
 * event on the pseudo-socket sk|1 (a struct sock is 8-aligned: the low bit is free), a
 * connection of its own in the agent, flagged ZT_F_TLS.
 *
 * Sequence numbers of plaintext events: a "virtual" TCP seq per direction, base + the
 * plaintext bytes moved so far, so that the agent's stream offsets are plaintext
 * offsets and both ends of a connection agree on every byte's seq.  The base is the
 * TCP seq of the first ciphertext record that carried plaintext in that direction:
 * egress, the first write syscall of the first SSL_write; ingress, the last 5-byte
 * record header read of the first SSL_read (OpenSSL without read-ahead reads a record
 * as header then body, and a TLS 1.3 client's first SSL_read reads the server's
 * session tickets before the data).  Both ends thus name the same ciphertext record:
 * exact matches for the stitcher; when a side misses that record the two virtual
 * spaces differ by the records' overhead and never match (no link, never a wrong one).
 *
 * The first time a socket is seen inside an SSL call a mark event (ZT_EV_CONN,
 * syscall ZT_SYS_TLS_MARK) tells the agent to drop that socket's ciphertext; the
 * ciphertext syscalls made inside SSL calls (all of it, for OpenSSL's socket BIO) are
 * not even emitted: this program clears the in-flight slot data.c's exit would use. */

#define ZT_SYS_TLS_MARK 32 /* agent/probes/tls.py: SYS_TLS_MARK; not an abi.h syscall */
#define ZT_TLS_HDR 5       /* TLS record header length */

struct zt_tls_call {
    __u64 ts_enter;
    __u64 buf;
    __u64 outlen;     /* SSL_*_ex: size_t * receiving the bytes moved */
    __u64 len;        /* a write without a return probe: the bytes offered */
    struct zt_active act; /* the socket of the call's first ciphertext syscall */
    __u32 seq_first;  /* TCP seq of that syscall */
    __u32 seq_hdr;    /* ingress: TCP seq of the last 5-byte read (a record header) */
    __u32 depth;      /* nested SSL calls of ours (ignored) */
    __u8 kind;        /* ZT_TLS_WRITE, ZT_TLS_READ, ZT_TLS_HANDSHAKE */
    __u8 ex;
    __u8 have_sock;
    __u8 have_hdr;
    __u8 busy;        /* 1: inside a call with a return probe (task storage is not
                       * deleted at return); 2: a write without one (ZT_TLS_NORET), in
                       * force until the thread's next SSL call or a syscall not its own */
    __u8 emitted;     /* a write without a return: its plaintext emitted (or skipped) */
};

struct zt_tls_sock {
    __u64 moved[2];   /* plaintext bytes per direction so far */
    __u32 base[2];    /* virtual seq base per direction */
    __u8 have_base[2];
    __u8 go;          /* Go crypto/tls (bpf/gotls.c): its ciphertext is skipped by socket */
    __u8 _pad;
    __u16 lport, rport; /* Go: the connection it was made for (an address reused by */
    __u32 tgid;         /* another connection does not match) */
    /* writes emitted without a return probe: the TCP write_seq expected after the last
     * ciphertext write of an SSL call (an SSL_write starting elsewhere continues one the
     * kernel did not take in full: a WANT_WRITE retry), and the user range of the last
     * plaintext emitted (SSL_MODE_ENABLE_PARTIAL_WRITE: the rest offered again) */
    __u32 wexp;
    __u8 have_wexp;
    __u8 _pad2[3];
    __u64 wstart, wend;
};

#define ZT_TLS_WRITE 1
#define ZT_TLS_READ 2
#define ZT_TLS_HANDSHAKE 3

/* The SSL call in flight on a thread: task storage, as data.c's `active` (no bucket
 * lock, and the syscall program's look-up outside SSL calls is cheap) */
#ifdef ZT_ACTIVE_HASH
BPF_HASH(tls_calls, __u32, struct zt_tls_call, 16384);
static __always_inline struct zt_tls_call *zt_tls_call_get(int create)
{
    __u32 tid = (__u32)bpf_get_current_pid_tgid();
    if (create) {
        struct zt_tls_call zero = {};
        tls_calls.insert(&tid, &zero); /* keeps an existing entry */
    }
    return tls_calls.lookup(&tid);
}
#else
BPF_TASK_STORAGE(tls_calls, struct zt_tls_call);
static __always_inline struct zt_tls_call *zt_tls_call_get(int create)
{
    struct task_struct *t = (struct task_struct *)bpf_get_current_task_btf();
    return tls_calls.task_storage_get(t, 0, create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
}
#endif
/* marks emitted so far: the agent looks for marks in a batch only when this moved */
BPF_ARRAY(tls_marks, __u64, 1);
/* ciphertext syscalls inside SSL calls, not emitted */
BPF_PERCPU_ARRAY(tls_cipher_skipped, __u64, 1);
/* plaintext events emitted */
BPF_PERCPU_ARRAY(tls_plain_emitted, __u64, 1);
BPF_TABLE("lru_hash", __u64, struct zt_tls_sock, tls_socks, 65536);
/* SSL object -> its socket, for calls that made no syscall (data already buffered) */
BPF_TABLE("lru_hash", __u64, struct zt_active, tls_ssl_sock, 65536);
/* Per process (tgid), for the agent's Prometheus metrics (agent/probes/tls.py
 * TlsAttacher.process_counters): plaintext bytes per direction, TLS connections seen and
 * those whose handshake was missed (opened before the agent: no role known). */
struct zt_tls_proc {
    __u64 bytes[2];
    __u64 conns;
    __u64 midstream;
    char comm[16];  /* at its first TLS event: named even if it exits before a scrape */
};
BPF_TABLE("lru_hash", __u32, struct zt_tls_proc, tls_procs, 4096);

static __always_inline struct zt_tls_proc *zt_tls_proc_get(__u32 tgid)
{
    struct zt_tls_proc *p = tls_procs.lookup(&tgid);
    if (p)
        return p;
    struct zt_tls_proc z = {};
    bpf_get_current_comm(z.comm, sizeof(z.comm));
    tls_procs.insert(&tgid, &z);
    return tls_procs.lookup(&tgid);
}

/* Tell the agent that socket a->sk carries TLS (ZT_EV_CONN, ZT_SYS_TLS_MARK): it drops
 * the socket's ciphertext and opens sk|1 with the role the kernel saw. */
static __always_inline void zt_tls_mark(struct zt_active *a)
{
    struct zt_config *cfg = zt_cfg();
    int zero = 0;
    struct zt_scratch *s = scratch.lookup(&zero);
    if (!cfg || !s)
        return;
    __u64 id = bpf_get_current_pid_tgid(), sk = a->sk;
    zt_fill(&s->ev, a, id, 0, bpf_ktime_get_ns(), cfg);
    s->ev.type = ZT_EV_CONN;
    s->ev.syscall = ZT_SYS_TLS_MARK;
    s->ev.direction = 0;
    s->ev.seq = 0;
    struct zt_sockstate *st = socks.lookup(&sk);
    s->ev.role = st ? st->role : ZT_ROLE_UNKNOWN;
    struct zt_tls_proc *pc = zt_tls_proc_get(id >> 32);
    if (pc) {
        __sync_fetch_and_add(&pc->conns, 1);
        if (s->ev.role == ZT_ROLE_UNKNOWN)
            __sync_fetch_and_add(&pc->midstream, 1);
    }
    __u64 *n = tls_marks.lookup(&zero);
    if (n)
        __sync_fetch_and_add(n, 1);
    zt_submit(s, sizeof(struct zt_event), cfg);
}

/* Emit len plaintext bytes at user address buf moved in direction d on the connection of
 * act (its sk|1), at the direction's virtual seq; `base` is the direction's base when it
 * has none yet. */
static __always_inline void zt_tls_emit(struct zt_tls_sock *ts, struct zt_active *act,
                                        __u64 ts_enter, __u64 buf, __u64 len, int d,
                                        __u32 base)
{
    if (!ts->have_base[d & 1]) {
        ts->base[d & 1] = base;
        ts->have_base[d & 1] = 1;
    }
    __u32 vseq = ts->base[d & 1] + (__u32)ts->moved[d & 1];
    ts->moved[d & 1] += len;

    struct zt_config *cfg = zt_cfg();
    int zero = 0;
    struct zt_scratch *s = scratch.lookup(&zero);
    if (!cfg || !s)
        return;
    __u64 id = bpf_get_current_pid_tgid(), sk = act->sk;
    struct zt_active a = *act;
    a.sys = d == ZT_DIR_EGRESS ? ZT_SYS_WRITE : ZT_SYS_READ;
    a.seq = vseq;
    a.has_seq = 1;
    a.ts_enter = ts_enter;
    zt_fill(&s->ev, &a, id, len, bpf_ktime_get_ns(), cfg);
    s->ev.sock_id = sk | 1; /* after zt_fill: it reads the socket at a.sk */
    __u32 want = len < ZT_PAYLOAD_MAX ? len : ZT_PAYLOAD_MAX;
    if (bpf_probe_read_user(s->payload, want, (void *)buf) != 0) {
        want = 0;
        zt_count_drop(ZT_DROP_READ_FAULT);
    }
    struct zt_event *ev = &s->ev;
    ev->type = ZT_EV_DATA;
    ev->direction = d;
    ev->seq = vseq;
    ev->captured = want;
    ev->flags |= ZT_F_TLS | ZT_F_HAS_SEQ;
    if (want < len)
        ev->flags |= ZT_F_TRUNCATED;
    /* the mask keeps the size provably bounded for the verifier (want <= MAX) */
    zt_submit(s, sizeof(struct zt_event) + (want & (2 * ZT_PAYLOAD_MAX - 1)), cfg);
    __u64 *n = tls_plain_emitted.lookup(&zero);
    if (n)
        *n += 1;
    struct zt_tls_proc *pc = zt_tls_proc_get(id >> 32);
    if (pc)
        __sync_fetch_and_add(&pc->bytes[d & 1], len);
}

/* Go crypto/tls: its own uprobes, sharing tls_socks, the mark and the emission */
#include "gotls.c"

/* ret: a return probe follows this entry (reads, the handshake; writes only with
 * ZEROTRACE_TLS_WRITE_RETURN=1, the design before).  A write without one (ZT_TLS_NORET):
 * its buffer and length are known here; what the call took is decided by its syscalls
 * (zt_tls_write_syscall), so the return's trap (~1 us a write on a VM) is saved. */
static __always_inline int zt_tls_enter(struct pt_regs *ctx, __u8 kind, __u8 ex, __u8 ret)
{
    __u64 id = bpf_get_current_pid_tgid();
    struct zt_config *cfg = zt_cfg();
    if (!cfg || !zt_task_wanted(cfg, id >> 32))
        return 0;
    __u64 now = bpf_ktime_get_ns();
    struct zt_tls_call *slot = zt_tls_call_get(1);
    if (!slot)
        return 0;
    /* a call of ours inside another (SSL_read running the handshake): the outer one
     * owns the syscalls; an entry 10 s old is a call that never returned.  Only a call
     * with a return probe can be "inside": a write without one ends at the next entry. */
    if (slot->busy == 1 && now - slot->ts_enter < 10000000000ULL) {
        if (ret)
            slot->depth++;
        return 0;
    }
    struct zt_tls_call c = {};
    c.ts_enter = now;
    c.kind = kind;
    c.ex = ex;
    c.buf = PT_REGS_PARM2(ctx);
    c.outlen = ex ? PT_REGS_PARM4(ctx) : 0;
    if (!ret) {
        /* SSL_write(s, buf, int num); SSL_write_ex and the internal function: size_t */
        if (ex) {
            c.len = PT_REGS_PARM3(ctx);
        } else {
            int num = (int)PT_REGS_PARM3(ctx);
            c.len = num > 0 ? num : 0;
        }
        if (!c.len)
            c.emitted = 1; /* nothing to emit; the call still names its socket */
    }
    __u64 ssl = PT_REGS_PARM1(ctx);
    struct zt_active *known = tls_ssl_sock.lookup(&ssl);
    if (known) {
        c.act = *known;
        c.have_sock = 2; /* known, but no syscall of this call seen yet */
    }
    c.act.addr = ssl; /* zt_active.addr is unused for TCP: the SSL object */
    c.busy = ret ? 1 : 2;
    *slot = c;
    return 0;
}

/* The byte count of a write(2)/sendto(2) (read(2)/recvfrom(2)) at its enter
 * tracepoint: the third argument, at +32 (data.c keeps the buffer, not the count) */
static __always_inline __u64 zt_tls_sys_count(void *ctx)
{
    __u64 count = 0;
    bpf_probe_read_kernel(&count, sizeof(count), (char *)ctx + 32);
    return count;
}

/* The first bytes of a write(2)/sendto(2) buffer: a TLS record header?  Returns its
 * content type (20-23), 0 when not one or not readable. */
static __always_inline int zt_tls_record_type(void *ctx, struct zt_active *a)
{
    if (a->sys != ZT_SYS_WRITE && a->sys != ZT_SYS_SENDTO)
        return 0;
    __u8 h[3] = {};
    if (zt_tls_sys_count(ctx) < ZT_TLS_HDR || bpf_probe_read_user(h, sizeof(h), (void *)a->buf))
        return 0;
    if (h[0] < 20 || h[0] > 23 || h[1] != 3 || h[2] > 4)
        return 0;
    return h[0];
}

/* Does egress syscall a continue the ciphertext of the socket's last SSL write: at the
 * write_seq the last one left, or a TLS record header? */
static __always_inline int zt_tls_write_continues(void *ctx, struct zt_active *a)
{
    if (!zt_is_egress(a->sys))
        return 0;
    __u64 sk = a->sk;
    struct zt_tls_sock *ts = tls_socks.lookup(&sk);
    if (ts && ts->have_wexp && ts->wexp == a->seq)
        return 1;
    return zt_tls_record_type(ctx, a) != 0;
}

/* An egress ciphertext syscall of socket a->sk inside an SSL call (c): emit the
 * plaintext of a write without a return probe at its first application-data record
 * (a handshake run inside SSL_write writes its records first), unless the call only
 * continues an earlier one (see zt_tls_sock.wexp); then note the write_seq expected
 * after this syscall. */
static __always_inline void zt_tls_write_syscall(void *ctx, struct zt_tls_call *c,
                                                 struct zt_active *a)
{
    __u64 sk = a->sk;
    struct zt_tls_sock *ts = tls_socks.lookup(&sk);
    if (!ts)
        return;
    if (c->busy == 2 && c->kind == ZT_TLS_WRITE && !c->emitted) {
        int type = zt_tls_record_type(ctx, a);
        if (type < 20 || type > 22) { /* application data, or a syscall not looked into */
            c->emitted = 1;
            int cont = ts->have_wexp && ts->wexp != a->seq;
            cont |= c->buf > ts->wstart && c->buf < ts->wend && c->buf + c->len == ts->wend;
            if (!cont) {
                ts->wstart = c->buf;
                ts->wend = c->buf + c->len;
                zt_tls_emit(ts, &c->act, c->ts_enter, c->buf, c->len, ZT_DIR_EGRESS, a->seq);
            }
        }
    }
    if (a->sys == ZT_SYS_WRITE || a->sys == ZT_SYS_SENDTO) {
        ts->wexp = a->seq + (__u32)zt_tls_sys_count(ctx);
        ts->have_wexp = 1;
    } else {
        ts->have_wexp = 0; /* writev/sendmsg: not OpenSSL's socket BIO */
    }
}

/* zt_tls_sys_call, the one program the data syscalls' enter jumps to inside SSL calls */
BPF_PROG_ARRAY(tls_sys_call, 1);

/* The data syscalls' enter, at the end of data.c's zt_data_enter: the common case
 * (no SSL call under way on this thread) decided there, in the same program (a second
 * program on eight tracepoints cost ~40 ns a syscall and a second lookup of the
 * in-flight slot); a syscall inside an SSL call jumps to zt_tls_sys_call (a tail call:
 * its code compiled once, not inlined into eight programs, 0.7 s of clang at start). */
static __always_inline int zt_tls_sys_enter(void *ctx, struct zt_active *a)
{
    if (a->transport != ZT_IPPROTO_TCP || !a->has_seq)
        return 0;
    struct zt_tls_call *c = zt_tls_call_get(0);
    if (!c || !c->busy)
        return zt_gotls_sys_enter(a); /* a Go TLS socket's ciphertext? */
    tls_sys_call.call(ctx, 0);
    zt_count_drop(ZT_DROP_TLS_JUMP); /* here only when the jump failed */
    return 0;
}

/* Inside an SSL call: note the ciphertext's socket and seqs.  ctx: the sys_enter
 * tracepoint's record (its count). */
int zt_tls_sys_call(void *ctx)
{
    struct zt_active *a = zt_active_get(0);
    if (!a || !a->busy)
        return 0;
    struct zt_tls_call *c = zt_tls_call_get(0);
    if (!c || !c->busy)
        return 0;
    int egress = zt_is_egress(a->sys);
    if (c->have_sock != 1) {
        if (c->busy == 2) {
            /* a write without a return probe may have ended without a syscall (an
             * error, nothing to write): its first syscall must be on the socket its SSL
             * object used, or, unknown, write a TLS record; else the slot is over and
             * this syscall is not ciphertext of ours */
            if (c->have_sock == 2 ? c->act.sk != a->sk : !egress || !zt_tls_record_type(ctx, a)) {
                c->busy = 0;
                return zt_gotls_sys_enter(a);
            }
        }
        /* the first ciphertext syscall of this call names its socket (over what an
         * earlier call of this SSL object said: the address may be reused) */
        __u64 ssl = c->act.addr;
        /* an LRU update costs; the SSL object keeps its socket for its life */
        int changed = c->have_sock != 2 || c->act.sk != a->sk;
        c->act = *a;
        c->act.addr = ssl;
        c->have_sock = 1;
        c->seq_first = a->seq;
        if (changed)
            tls_ssl_sock.update(&ssl, a);
        __u64 sk = a->sk;
        struct zt_tls_sock *known = tls_socks.lookup(&sk);
        /* a handshake on a socket that already moved plaintext: the address of a
         * closed connection, reused (TLS 1.3 has no renegotiation) */
        if (known && c->kind == ZT_TLS_HANDSHAKE && (known->moved[0] || known->moved[1]))
            known = 0;
        if (!known) {
            struct zt_tls_sock z = {};
            tls_socks.update(&sk, &z);
            zt_tls_mark(a); /* before this syscall's ciphertext event (emitted at exit) */
        }
    } else if (c->act.sk != a->sk) {
        /* a write's slot outlives its call: another socket's syscall is not its own */
        return c->busy == 2 ? zt_gotls_sys_enter(a) : 0;
    } else if (c->busy == 2 && c->emitted && !zt_tls_write_continues(ctx, a)) {
        /* after its plaintext, a write's call moves only ciphertext out: the rest of a
         * partly taken record (at the seq the last one left) or another record.  Else
         * the call is over and this is not its own: the socket closed and its address
         * reused by a new connection (slab reuse) must not have its bytes taken. */
        c->busy = 0;
        return zt_gotls_sys_enter(a);
    }
    if (egress)
        zt_tls_write_syscall(ctx, c, a);
    else if (c->kind == ZT_TLS_READ && (a->sys == ZT_SYS_READ || a->sys == ZT_SYS_RECVFROM)) {
        /* read(fd, buf, count) and recvfrom(fd, buf, size, ...) */
        if (zt_tls_sys_count(ctx) == ZT_TLS_HDR) {
            c->seq_hdr = a->seq;
            c->have_hdr = 1;
        }
    }
    /* The ciphertext itself is not wanted: data.c's exit finds no syscall in flight
     * and emits nothing (cheaper than shipping it to the agent to be dropped there). */
    a->busy = 0;
    int slot = 0;
    __u64 *n = tls_cipher_skipped.lookup(&slot);
    if (n)
        *n += 1;
    return 0;
}

static __always_inline int zt_tls_exit(struct pt_regs *ctx)
{
    struct zt_tls_call *cp = zt_tls_call_get(0);
    if (!cp || cp->busy != 1)
        return 0;
    if (cp->depth) {
        cp->depth--;
        return 0;
    }
    struct zt_tls_call c = *cp;
    cp->busy = 0;
    if (c.kind == ZT_TLS_HANDSHAKE || !c.have_sock)
        return 0;
    /* int: SSL_read/SSL_write return an int, the upper half of rax is not its sign */
    int rc = (int)PT_REGS_RC(ctx);
    __u64 len = 0;
    if (c.ex) {
        /* SSL_*_ex: 1 or 0; the internal function both wrappers call (agent/probes/
         * tls.py INNER), also probed with the _ex programs: > 0 on success */
        if (rc <= 0)
            return 0;
        bpf_probe_read_user(&len, sizeof(len), (void *)c.outlen);
    } else {
        if (rc <= 0)
            return 0;
        len = rc;
    }
    if (!len)
        return 0;
    __u64 sk = c.act.sk;
    struct zt_tls_sock *ts = tls_socks.lookup(&sk);
    if (!ts)
        return 0;
    int d = c.kind == ZT_TLS_WRITE ? ZT_DIR_EGRESS : ZT_DIR_INGRESS;
    __u32 base;
    if (c.have_sock != 1)
        base = bpf_get_prandom_u32(); /* no ciphertext seen: match nothing */
    else if (d == ZT_DIR_INGRESS && c.have_hdr)
        base = c.seq_hdr;
    else
        base = c.seq_first;
    zt_tls_emit(ts, &c.act, c.ts_enter, c.buf, len, d, base);
    return 0;
}

/* writes: without a return probe (the default); _r: with one (ZEROTRACE_TLS_WRITE_RETURN) */
int zt_ssl_write(struct pt_regs *ctx) { return zt_tls_enter(ctx, ZT_TLS_WRITE, 0, 0); }
int zt_ssl_write_ex(struct pt_regs *ctx) { return zt_tls_enter(ctx, ZT_TLS_WRITE, 1, 0); }
int zt_ssl_write_r(struct pt_regs *ctx) { return zt_tls_enter(ctx, ZT_TLS_WRITE, 0, 1); }
int zt_ssl_write_ex_r(struct pt_regs *ctx) { return zt_tls_enter(ctx, ZT_TLS_WRITE, 1, 1); }
int zt_ssl_read(struct pt_regs *ctx) { return zt_tls_enter(ctx, ZT_TLS_READ, 0, 1); }
int zt_ssl_read_ex(struct pt_regs *ctx) { return zt_tls_enter(ctx, ZT_TLS_READ, 1, 1); }
int zt_ssl_handshake(struct pt_regs *ctx) { return zt_tls_enter(ctx, ZT_TLS_HANDSHAKE, 0, 1); }
int zt_ssl_ret(struct pt_regs *ctx) { return zt_tls_exit(ctx); }

/* ---- The exec hook (agent/probes/tls.py ExecHook) ------------------------------------
 * Go executables and programs linking OpenSSL statically carry their TLS code in the
 * executable itself: its probes can only go in once the agent has looked at the file.
 * A short-lived client would be over before the 2 s scan sees it.  So on
 * sched_process_exec (raw tracepoint: its arguments include the binprm, whose file names
 * the executable by device and inode):
 * - a file the agent already looked at (tls_exec_known) needs nothing, except a Go file
 *   with crypto/tls: the process's struct offsets are written here (gotls_procs, its
 *   itab moved by the load bias of a PIE executable), before its first instruction;
 * - a file never seen is reported (ring tls_execs) and, when holding is on and the
 *   agent's exec thread is alive (its heartbeat is recent), the process is stopped
 *   (SIGSTOP, delivered before it returns to user space) until the agent has looked at
 *   the file, attached what it needs, and sent SIGCONT (at most a few seconds: the
 *   agent continues it when the look takes longer).  Each distinct file is held once.
 * Kernel struct offsets come from this kernel's BTF, written by the agent into
 * tls_exec_cfg (not -D flags: they are read by this program only). */
struct zt_exec_cfg {
    __u64 heartbeat_ns;  /* bpf_ktime_get_ns() of the agent's exec thread's last turn */
    __u32 hold;          /* 1: stop unknown executables until the agent looked */
    __u32 bprm_file, inode_ino, inode_sb, sb_dev;
    __u32 task_mm, mm_start_code, task_nsproxy, nsproxy_net;
};

struct zt_exec_key {
    __u64 ino;
    __u32 dev;  /* the kernel's dev_t encoding (MAJOR << 20 | MINOR) */
    __u32 _pad;
};

struct zt_exec_known {
    struct zt_gotls_offsets o; /* Go: the offsets, itab as linked */
    __u64 text_vaddr;          /* Go: where the lowest executable segment is linked */
    __u8 go;                   /* 1: a Go executable with crypto/tls probes */
    __u8 pie;
    __u8 _pad[6];
};

struct zt_exec_event {
    __u64 ino;
    __u32 dev;
    __u32 pid;
    __u8 held;
    __u8 go;
    __u8 _pad[6];
};

BPF_ARRAY(tls_exec_cfg, struct zt_exec_cfg, 1);
BPF_TABLE("lru_hash", struct zt_exec_key, struct zt_exec_known, tls_exec_known, 16384);
BPF_RINGBUF_OUTPUT(tls_execs, 16);
/* 0: held, 1: unknown and not held (no agent heartbeat, or the ring full), 2: Go
 * processes given offsets here */
BPF_ARRAY(tls_exec_stats, __u64, 3);

static __always_inline void zt_exec_count(int i)
{
    __u64 *n = tls_exec_stats.lookup(&i);
    if (n)
        __sync_fetch_and_add(n, 1);
}

static __always_inline __u64 zt_kread64(__u64 base, __u32 off)
{
    __u64 v = 0;
    if (base)
        bpf_probe_read_kernel(&v, sizeof(v), (void *)(base + off));
    return v;
}

int zt_tls_exec(struct bpf_raw_tracepoint_args *ctx)
{
    int zero = 0;
    struct zt_exec_cfg *ec = tls_exec_cfg.lookup(&zero);
    struct zt_config *cfg = zt_cfg();
    if (!ec || !cfg || !ec->bprm_file)
        return 0;
    __u64 id = bpf_get_current_pid_tgid();
    __u32 tgid = id >> 32;
    if (!zt_task_wanted(cfg, tgid))
        return 0;
    __u64 task = bpf_get_current_task();
    if (cfg->filter_netns) { /* the socket filter, here by the task's namespace */
        __u64 nsp = zt_kread64(task, ec->task_nsproxy);
        __u64 net = zt_kread64(nsp, ec->nsproxy_net);
        __u32 inum = 0;
        if (!net || bpf_probe_read_kernel(&inum, sizeof(inum), (void *)(net + OFF_NET_NS_INUM)))
            return 0;
        if (!filter_netns.lookup(&inum))
            return 0;
    }
    __u64 bprm = ctx->args[2];
    __u64 file = zt_kread64(bprm, ec->bprm_file);
    __u64 inode = zt_kread64(file, OFF_FILE_INODE);
    __u64 sb = zt_kread64(inode, ec->inode_sb);
    if (!inode || !sb)
        return 0;
    struct zt_exec_key k = {};
    k.ino = zt_kread64(inode, ec->inode_ino);
    bpf_probe_read_kernel(&k.dev, sizeof(k.dev), (void *)(sb + ec->sb_dev));
    struct zt_exec_known *known = tls_exec_known.lookup(&k);
    if (known && !known->go)
        return 0;
    if (known) {
        struct zt_gotls_offsets o = known->o;
        if (known->pie) {
            __u64 mm = zt_kread64(task, ec->task_mm);
            __u64 start = zt_kread64(mm, ec->mm_start_code);
            if (!start)
                return 0;
            o.itab += start - known->text_vaddr;
        }
        gotls_procs.update(&tgid, &o);
        zt_exec_count(2);
    }
    struct zt_exec_event *e = tls_execs.ringbuf_reserve(sizeof(struct zt_exec_event));
    if (!e) {
        if (!known)
            zt_exec_count(1);
        return 0;
    }
    e->ino = k.ino;
    e->dev = k.dev;
    e->pid = tgid;
    e->go = known ? 1 : 0;
    e->held = 0;
    if (!known && ec->hold) {
        /* only while the agent's exec thread turns (a dead agent holds nothing); the
         * tools the agent runs itself (objdump, ldconfig) are known from its start */
        if (bpf_ktime_get_ns() - ec->heartbeat_ns < 1000000000ULL) {
            e->held = 1;
            bpf_send_signal(19); /* SIGSTOP: stops before the first user instruction */
            zt_exec_count(0);
        }
    }
    if (!known && !e->held)
        zt_exec_count(1);
    tls_execs.ringbuf_submit(e, 0);
    return 0;
}
