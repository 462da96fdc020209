/* Maps shared by the probes of one agent. */
#ifndef ZT_MAPS_H
#define ZT_MAPS_H
#include "abi.h"

#ifndef ZT_PAYLOAD_MAX
#define ZT_PAYLOAD_MAX 1024 /* power of two; set by the agent (--payload-bytes) */
#endif
#ifndef ZT_RINGBUF_PAGES
#define ZT_RINGBUF_PAGES 4096
#endif
#ifndef ZT_IOV_MAX
#define ZT_IOV_MAX 32 /* grpcio writes one header block as ~27 iovecs */
#endif
#ifndef ZT_MMSG_MAX
#define ZT_MMSG_MAX 4
#endif
#ifndef ZT_MMSG_IOV_MAX
/* iovecs read per message of sendmmsg/recvmmsg (their users, DNS resolvers and QUIC,
 * send one or two; a message with more is captured in part and flagged TRUNCATED).  The
 * verifier walks ZT_MMSG_MAX x this many copy iterations: at 32 the exit program took
 * 375 000 instructions and 1-3.5 s to verify, at 4 it takes 55 000. */
#define ZT_MMSG_IOV_MAX 4
#endif

/* bcc 0.26 reads all of /proc/kallsyms (122 000 symbols here) again for every call
 * written `bpf_probe_read_user(...)`, to check that the kernel has that helper: ~0.1 s
 * per call site, 2 of the 5 CPU-seconds the socket probes took to compile.  Every kernel
 * the probes can load on has it (ring buffers need 5.8, the helper came in 5.5), so the
 * same helper is called under a name bcc does not check. */
static long (*zt_probe_read_user)(void *dst, __u32 size, const void *unsafe_ptr) =
    (void *)BPF_FUNC_probe_read_user;
#define bpf_probe_read_user zt_probe_read_user

/* ZT_ATTACH_ALSO(category, event, other): the loader (agent/probes/loader.py) attaches
 * the program of TRACEPOINT_PROBE(category, event) to category:other as well, after
 * checking in tracefs that both tracepoints have the same record layout.  The kernel
 * verifies a program once however many tracepoints it serves (the data syscalls' exit
 * took 1-2 s to verify, ten times over). */
#define ZT_ATTACH_ALSO(category, event, other)

/* A syscall in flight on a thread, from enter to exit. */
struct zt_active {
    __u64 ts_enter;
    __u64 sk;
    __u64 buf;     /* buffer, iovec array, user_msghdr or mmsghdr array */
    __u64 count;   /* iovec count / vlen */
    __u64 addr;    /* user sockaddr (sendto/recvfrom) */
    __s32 fd;
    __u32 seq;
    __u16 lport;
    __u16 rport;
    __u8 sys;
    __u8 has_seq;
    __u8 family;
    __u8 transport;
    __u8 busy; /* entered and not yet exited */
    __u8 stamped; /* stamp holds the thread's shed counters at entry (ZT_F_SHED_STAMP) */
    __u64 stamp;
};

/* Per socket, in map socks.  Connections whose start (connect/accept) the agent was
 * told of have a role; their TCP close is reported even when no close() of ours sees
 * it.  While sampling is on (zt_config.shed_mode), every data syscall of a traced socket
 * reads and updates its entry: an exchange starts where the request direction follows
 * the response direction, and is kept or shed whole.  Sockets of unknown role (first
 * seen mid-way, UDP) get an entry when first seen while sampling: kept or shed whole. */

/* A thread as the agent keys its history: by goroutine in Go processes it tracks. */
struct zt_thread_key {
    __u32 pid;
    __u32 tid;  /* 0 when goid is set */
    __u64 goid;
};

struct zt_sockstate {
    __u8 role;
    __u8 shed;     /* 1: the current exchange (role unknown: the connection) is not traced */
    __u8 last_dir; /* direction of the last data syscall that moved bytes while sampling */
    __u8 pend;     /* ZT_PEND_*: a shed syscall that turned the direction, left at its entry
                      (data.c zt_settle); whether it moved bytes is known from the seqs */
    __u32 gen;     /* zt_config.shed_gen when last_dir was set */
    __u32 pend_seq; /* the pending syscall's direction's seq at its entry */
    __u8 reading;  /* a shed request read on it is not answered yet: counted open on */
    __u8 _pad[7];
    struct zt_thread_key reader; /* ... the thread that read it (data.c zt_shed_turn) */
};
/* TCP ports listened on, by network namespace: the role of a connection first seen
 * mid-way while sampling (data.c zt_sample), so that a server connection opened before
 * the agent is sampled by exchange, with its shed exchanges counted, rather than kept
 * or shed whole with no word to the stitcher.  Kept by sock:inet_sock_set_state
 * (conn.c) once enabled; the listeners from before are written by the agent when it is
 * ready to shed (loader.py seed_listening), else at the first cut (set_keep). */
struct zt_listen_key {
    __u32 netns;
    __u16 port;
    __u16 _pad;
};
BPF_HASH(listening, struct zt_listen_key, __u8, 16384);

#define ZT_PEND_SET 1 /* a syscall is pending */
#define ZT_PEND_EGRESS 2 /* its direction: egress (else ingress) */
#define ZT_PEND_REQ 4 /* it turned to the request direction: a shed exchange started there */

struct zt_scratch {
    __u64 unsignalled; /* events submitted on this CPU since the last wake-up */
    struct zt_event ev;
    __u8 payload[2 * ZT_PAYLOAD_MAX];
};

BPF_RINGBUF_OUTPUT(events, ZT_RINGBUF_PAGES);
BPF_ARRAY(config, struct zt_config, 1);
BPF_PERCPU_ARRAY(drops, __u64, ZT_DROP_SLOTS);
BPF_PERCPU_ARRAY(stats, __u64, ZT_STAT_SLOTS);
/* skip hints (abi.h): sk | direction -> TCP seq right after a body the agent skips */
BPF_HASH(skips, __u64, __u32, 16384);
BPF_PERCPU_ARRAY(scratch, struct zt_scratch, 1);
#ifdef ZT_ACTIVE_HASH
/* Kernels before 5.11 have no task storage in tracing programs: a hash keyed by tid. */
BPF_HASH(active, __u32, struct zt_active, 16384);
#else
/* One in-flight syscall per task: task-local storage costs no bucket lock and needs no
 * delete, which measured ~0.3 µs less per syscall than a hash keyed by tid. */
BPF_TASK_STORAGE(active, struct zt_active);
#endif
BPF_TABLE("lru_hash", __u64, struct zt_sockstate, socks, 65536);
BPF_HASH(filter_pids, __u32, __u8, 4096);
/* Go: thread -> goroutine it runs (set by a uprobe on runtime.execute), and per Go
 * process the offset of goid in runtime.g (from the binary's DWARF). */
BPF_HASH(goids, __u32, __u64, 65536);
BPF_HASH(go_goid_offset, __u32, __u32, 1024);
/* Per thread: its shed server exchanges, counted for the stamps (abi.h ZT_F_SHED_STAMP) */
struct zt_shedctr {
    __u32 reads;     /* turns to a shed exchange's request read begun on the thread */
    __u32 answers;   /* turns to a shed exchange's answer begun on the thread */
    __u32 open;      /* requests it read, shed, not answered yet (any thread answers) */
    __u32 last_read; /* its last turn was a request read */
};
BPF_TABLE("lru_hash", struct zt_thread_key, struct zt_shedctr, shedctrs, 65536);
BPF_HASH(filter_cgroups, __u64, __u8, 4096);
BPF_HASH(filter_ports, __u16, __u8, 1024);
BPF_HASH(filter_netns, __u32, __u8, 1024);

static __always_inline void zt_count_drop(int slot)
{
    __u64 *n = drops.lookup(&slot);
    if (n)
        __sync_fetch_and_add(n, 1);
}

static __always_inline void zt_stat(int slot, __u64 n)
{
    __u64 *v = stats.lookup(&slot);
    if (v)
        __sync_fetch_and_add(v, n); /* softirq programs (tcp close) share the CPU */
}

/* The current task's in-flight slot, created on entry. */
static __always_inline struct zt_active *zt_active_get(int create)
{
#ifdef ZT_ACTIVE_HASH
    __u32 tid = (__u32)bpf_get_current_pid_tgid();
    if (create) {
        struct zt_active zero = {};
        active.update(&tid, &zero);
    }
    return active.lookup(&tid);
#else
    struct task_struct *t = (struct task_struct *)bpf_get_current_task_btf();
    return active.task_storage_get(t, 0, create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
#endif
}

/* Take the in-flight syscall of the current task at exit (a copy), or 0. */
static __always_inline int zt_active_take(struct zt_active *out)
{
    struct zt_active *a = zt_active_get(0);
    if (!a || !a->busy)
        return 0;
    *out = *a;
    a->busy = 0;
    return 1;
}

/* Payload capture switched off by cgroup (a pod's cgroups; agent/probes/capture.py,
 * the policy in agent/enrich/capture.py).  capture_mode slot 0: mode ZT_CAPTURE_ALL (no
 * look-up at all), ZT_CAPTURE_DENY (no payload for the cgroups in capture_cgroups) or
 * ZT_CAPTURE_ALLOW (payload only for them); a task is in a listed cgroup when its own
 * cgroup is listed or its ancestor at one of the depths in `levels` (bit n: depth n, the
 * depth of the pods' own cgroups): a container started in a listed pod is covered before
 * the agent has seen its cgroup.  A record of a cgroup switched off carries its header
 * (lengths, seqs, times, addresses) and no payload byte, flagged ZT_F_NOCAPTURE; the data
 * syscalls decide before copying, and zt_submit checks TLS plaintext records (bpf/tls.c
 * copies before it submits). */
#define ZT_CAPTURE_ALL 0
#define ZT_CAPTURE_DENY 1
#define ZT_CAPTURE_ALLOW 2
#define ZT_CAPTURE_LEVELS 8 /* ancestor depths 1..7 may be named */
struct zt_capture_cfg {
    __u32 mode;
    __u32 levels;
};
BPF_ARRAY(capture_mode, struct zt_capture_cfg, 1);
BPF_HASH(capture_cgroups, __u64, __u8, 16384);
/* 0: records sent without their payload, 1: the bytes those syscalls moved */
BPF_PERCPU_ARRAY(capture_stats, __u64, 2);
/* called under a name bcc does not look up in kallsyms (see zt_probe_read_user) */
static __u64 (*zt_ancestor_cgroup_id)(int level) =
    (void *)BPF_FUNC_get_current_ancestor_cgroup_id;

static __always_inline int zt_capture_off(__u64 cgid)
{
    int zero = 0;
    struct zt_capture_cfg *c = capture_mode.lookup(&zero);
    if (!c || c->mode == ZT_CAPTURE_ALL)
        return 0;
    int listed = capture_cgroups.lookup(&cgid) != 0;
#pragma unroll
    for (int l = 1; l < ZT_CAPTURE_LEVELS; l++) {
        if (listed)
            break;
        if (c->levels & (1u << l)) {
            __u64 anc = zt_ancestor_cgroup_id(l);
            listed = capture_cgroups.lookup(&anc) != 0;
        }
    }
    return c->mode == ZT_CAPTURE_DENY ? listed : !listed;
}

static __always_inline void zt_capture_count(__u64 bytes)
{
    int slot = 0;
    __u64 *n = capture_stats.lookup(&slot);
    if (n)
        __sync_fetch_and_add(n, 1);
    slot = 1;
    n = capture_stats.lookup(&slot);
    if (n)
        __sync_fetch_and_add(n, bytes);
}

/* The ring had no room: events are being lost now, and the agent's shedder may not look
 * for tens of ms (its loop busy in compiled code) while the ring refills at full rate.
 * So the probes cut the keep rate themselves, x1/4 at most every ZT_RING_CUT_NS, and
 * turn sampling on if it was off; the shedder adopts the lower rate at its next look
 * and raises it again once calm (agent/probes/shedding.py).  Only where the agent sheds
 * (zt_config.ring_cut): with shedding off, nothing is sampled, whatever is lost. */
#define ZT_RING_CUT_NS 20000000ULL
BPF_ARRAY(ring_cut, __u64, 1); /* time of the last cut */

static __always_inline void zt_ring_full_cut(struct zt_config *cfg)
{
    if (!cfg->ring_cut)
        return;
    int zero = 0;
    __u64 *last = ring_cut.lookup(&zero);
    if (!last)
        return;
    __u64 now = bpf_ktime_get_ns();
    if (now - *last < ZT_RING_CUT_NS)
        return;
    *last = now;
    __u32 keep = cfg->keep >> 2;
    if (keep < ZT_KEEP_FLOOR)
        keep = ZT_KEEP_FLOOR;
    if (keep >= cfg->keep)
        return;
    if (!cfg->shed_mode) {
        cfg->shed_gen += 1; /* direction state from before is not trusted (data.c) */
        cfg->shed_mode = 1;
    }
    cfg->keep = keep;
    zt_stat(ZT_STAT_RING_CUTS, 1);
}

/* Submit without a wake-up except every cfg->wakeup_events events on this CPU: a
 * wake-up per event would cost an IPI per syscall, and the agent also polls on a short
 * timer.  (bcc 0.26 has no ringbuf_query, so the count is ours.) */
static __always_inline void zt_submit(struct zt_scratch *s, __u64 size, struct zt_config *cfg)
{
    __u64 flags = BPF_RB_NO_WAKEUP;
    if ((s->ev.flags & ZT_F_TLS) && s->ev.type == ZT_EV_DATA && s->ev.captured &&
        zt_capture_off(s->ev.cgroup_id)) {
        /* TLS plaintext of a cgroup switched off: the header goes, the payload stays */
        zt_capture_count(s->ev.ret);
        s->ev.captured = 0;
        s->ev.flags |= ZT_F_NOCAPTURE | ZT_F_TRUNCATED;
        size = sizeof(struct zt_event);
    }
    if (++s->unsignalled >= cfg->wakeup_events) {
        s->unsignalled = 0;
        flags = BPF_RB_FORCE_WAKEUP;
    }
    if (events.ringbuf_output(&s->ev, size, flags) != 0) {
        zt_count_drop(ZT_DROP_RINGBUF_FULL);
        zt_ring_full_cut(cfg);
        return;
    }
    zt_stat(ZT_STAT_RECORDS, 1);
    zt_stat(ZT_STAT_RECORD_BYTES, size);
}
#endif
