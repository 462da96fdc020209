/* The ABI between the probes and the agent: event records in the ring buffer.
 * Mirrored once in Python (agent/probes/abi.py); tests/probes/test_abi.py compiles
 * this header and checks that both layouts agree.  Change both together. */
#ifndef ZT_ABI_H
#define ZT_ABI_H

#define ZT_EV_DATA 1 /* bytes moved by a socket syscall; payload prefix follows */
#define ZT_EV_CONN 2 /* connection life: connect, accept, close */
#define ZT_EV_WAKE 3 /* Go: a goroutine made runnable, or entering a channel receive (struct zt_wake) */

/* syscall kinds */
#define ZT_SYS_WRITE 1
#define ZT_SYS_READ 2
#define ZT_SYS_WRITEV 3
#define ZT_SYS_READV 4
#define ZT_SYS_SENDTO 5
#define ZT_SYS_RECVFROM 6
#define ZT_SYS_SENDMSG 7
#define ZT_SYS_RECVMSG 8
#define ZT_SYS_SENDMMSG 9
#define ZT_SYS_RECVMMSG 10
#define ZT_SYS_CONNECT 11
#define ZT_SYS_ACCEPT 12
#define ZT_SYS_ACCEPT4 13
#define ZT_SYS_CLOSE 14
#define ZT_SYS_STATE_CLOSE 15 /* TCP socket reached TCP_CLOSE (sock:inet_sock_set_state) */

#define ZT_DIR_EGRESS 0  /* the process wrote/sent */
#define ZT_DIR_INGRESS 1 /* the process read/received */

#define ZT_ROLE_UNKNOWN 0
#define ZT_ROLE_CLIENT 1
#define ZT_ROLE_SERVER 2

/* flags */
#define ZT_F_HAS_SEQ 1      /* seq is the TCP sequence number of the first byte */
#define ZT_F_MIDSTREAM 2    /* set by the agent: connection first seen after it started */
#define ZT_F_PEER_FROM_MSG 4 /* raddr/rport come from the syscall's sockaddr (unconnected UDP) */
#define ZT_F_TRUNCATED 8    /* captured < ret: payload beyond the capture limit */
#define ZT_F_TLS 16         /* plaintext of a TLS connection (bpf/tls.c), on pseudo-socket sk|1 */
#define ZT_F_RESUMED 32     /* conn records the probes made where a sampled-out connection is
                               traced again: a close, then a connect (client) or accept
                               (server) whose seq/offset are the bases of the kept exchange */
#define ZT_F_NOCAPTURE 64   /* payload capture switched off for the record's cgroup (maps.h
                               zt_capture_off): header only, no payload byte */
#define ZT_F_SHED_STAMP 128 /* data records while sampling is on (zt_config.shed_mode):
                               `offset` holds the thread's shed counters at the syscall's
                               entry (ZT_STAMP_*, data.c zt_shed_turn), from which the
                               stitcher knows where on the thread a server exchange left
                               out by sampling was read and answered, with no record of
                               its own */

/* A shed stamp (ZT_F_SHED_STAMP), per thread (per goroutine where the agent keys by
 * goroutine): turns to the request direction of shed server exchanges begun on it (mod
 * 2^24), turns to their answer begun on it (mod 2^24), requests it read that are not
 * answered yet (whatever thread answers them; saturating), and whether its last such
 * turn was a request read. */
#define ZT_STAMP_READS(s) ((s) & 0xffffff)
#define ZT_STAMP_ANSWERS_SHIFT 24
#define ZT_STAMP_OPEN_SHIFT 48
#define ZT_STAMP_OPEN_MAX 0x7fff
#define ZT_STAMP_LAST_READ (1ULL << 63)

/* drop counter slots (per-CPU array "drops") */
#define ZT_DROP_RINGBUF_FULL 0
#define ZT_DROP_ACTIVE_FULL 1 /* no in-flight slot could be had for the task */
#define ZT_DROP_READ_FAULT 2
#define ZT_DROP_WAKE_FULL 3 /* a struct zt_wake found the ring buffer full */
#define ZT_DROP_TLS_JUMP 4 /* a syscall inside an SSL call not looked at (tls.c) */
#define ZT_DROP_SLOTS 5

/* counter slots (per-CPU array "stats"): what went into the ring, and what was left out
 * on purpose (sampling under overload, bodies the agent said to skip) */
#define ZT_STAT_RECORDS 0         /* records submitted to the ring */
#define ZT_STAT_RECORD_BYTES 1    /* their bytes, header and payload */
#define ZT_STAT_SHED_EXCHANGES 2  /* request/response exchanges not traced (sampling) */
#define ZT_STAT_SHED_CONNS 3      /* connections of unknown role not traced at all */
#define ZT_STAT_SHED_SYSCALLS 4   /* data syscalls not emitted because of sampling */
#define ZT_STAT_SHED_BYTES 5      /* bytes moved by those that turned the direction
                                     (data.c zt_sample, zt_settle; a lower bound: the
                                     rest of a shed exchange is left at entry uncounted) */
#define ZT_STAT_KEPT_EXCHANGES 6  /* exchanges decided while sampling, and kept */
#define ZT_STAT_SKIPPED_SYSCALLS 7 /* data syscalls inside a body the agent said to skip */
#define ZT_STAT_SKIPPED_BYTES 8   /* bytes not emitted because of skip hints (payloads) */
#define ZT_STAT_RING_CUTS 9       /* keep-rate cuts the probes made themselves on a full ring
                                     (maps.h zt_ring_full_cut) */
#define ZT_STAT_SLOTS 10

/* Sampling: an exchange (a request and its response) is kept when a random 16-bit
 * number is below zt_config.keep; ZT_KEEP_ALL keeps every one. */
#define ZT_KEEP_ALL 65536
#define ZT_KEEP_FLOOR 64 /* the probes' own cuts stop here (agent: shedding.MIN_KEEP) */

/* Skip hints (hash map "skips"): key = struct sock address | direction (socks are
 * 8-byte aligned), value = the TCP seq right after a body the agent's parser will skip
 * by length.  Data syscalls wholly inside it that would be captured in part anyway
 * (more than ZT_PAYLOAD_MAX bytes) are not emitted, except the last, emitted with no
 * payload (its time ends the message). */

struct zt_event {
    __u64 ts_enter;  /* bpf_ktime_get_ns() at syscall entry */
    __u64 ts_exit;   /* ... at syscall exit */
    __u64 cgroup_id;
    __u64 sock_id;   /* kernel address of struct sock: the connection while it lives */
    __u64 offset;    /* data: 0, or a shed stamp (ZT_F_SHED_STAMP); the agent derives
                        stream offsets from seq.  connect/accept of TCP: the ingress
                        base seq (copied_seq) */
    __s64 ret;       /* syscall return: bytes moved (data), fd (accept), 0/-errno (connect) */
    __u64 goid;      /* Go goroutine running on the thread (Go processes the agent tracks), else 0 */
    __u32 pid;       /* tgid */
    __u32 tid;
    __s32 fd;
    __u32 seq;       /* data: TCP seq of the first byte; connect/accept: egress base seq */
    __u32 netns;     /* network namespace inode number */
    __u32 captured;  /* payload bytes that follow this header */
    __u16 lport;     /* host byte order */
    __u16 rport;
    __u8 type;
    __u8 syscall;
    __u8 direction;
    __u8 role;
    __u8 family;     /* AF_INET / AF_INET6 */
    __u8 transport;  /* IPPROTO_TCP / IPPROTO_UDP */
    __u8 flags;
    __u8 _pad;
    __u8 laddr[16];  /* IPv4 in the first 4 bytes */
    __u8 raddr[16];
    char comm[16];
};

/* Agent-controlled settings, array map "config" slot 0. */
struct zt_config {
    __u32 self_pid;      /* the agent itself: never traced (its exports would loop) */
    __u8 enabled;        /* set last by the agent: bcc attaches before filters are written */
    __u8 track_goid;     /* some Go process is tracked: look goroutine ids up */
    __u8 _pad[2];
    __u8 filter_pid;     /* only tgids in map filter_pids */
    __u8 filter_cgroup;  /* only cgroup ids in filter_cgroups */
    __u8 filter_port;    /* only sockets whose local or remote port is in filter_ports */
    __u8 filter_netns;   /* only sockets in network namespaces of filter_netns */
    __u32 wakeup_events; /* wake the agent every this many events per CPU */
    __u32 keep;          /* sampling: keep an exchange when rand16 < keep (ZT_KEEP_ALL) */
    __u32 shed_gen;      /* bumped by the agent when sampling starts: per-socket direction
                            state older than this is not trusted to find exchange starts */
    __u8 shed_mode;      /* sampling state is kept per socket (set once, never cleared) */
    __u8 skip_hints;     /* the agent writes skip hints: look them up */
    __u8 ring_cut;       /* the probes cut keep themselves on a full ring (the agent sheds:
                            maps.h zt_ring_full_cut) */
    __u8 _pad2[1];
};

/* Go scheduler records (bpf/gowake.c), for linking a goroutine's writes to the goroutine
 * that handed it the work (net/http's pooled client: handler -> writeLoop).  A record
 * in the ring shorter than struct zt_event is a zt_wake. */
#define ZT_WAKE_HANDOFF 1 /* runtime.send -> ready: a channel value handed to goid, parked on it */
#define ZT_WAKE_OTHER 2   /* any other runtime.ready of goid: mutex, close, timer, GC, ... */
#define ZT_WAKE_RECV 3    /* goid entered a channel receive or select (runtime.chanrecv, selectgo) */
/* Channel-buffer record kinds (agent/stitch/handoff.py).  zt_wake fields:
 * goid = the goroutine acting, waker = the buffer slot's address, except as noted. */
#define ZT_WAKE_ENQ 4    /* goid copied a value into slot waker */
#define ZT_WAKE_DEQ 5    /* goid copied slot waker's value out */
#define ZT_WAKE_SWAP 6   /* goid took slot waker's value; the parked sender thread_goid's
                            value took its place */
#define ZT_WAKE_DIRECT 7 /* goid received from parked sender waker (a goid) directly */
#define ZT_WAKE_MIXED 8  /* goid copied between waker and thread_goid (addresses), in a
                            select with send and receive cases: which was the slot unknown */

struct zt_wake {
    __u64 ts;          /* bpf_ktime_get_ns(), the clock of zt_event */
    __u64 waker;       /* goid of the goroutine that woke it; 0: none (scheduler, g0) or RECV */
    __u64 goid;        /* the goroutine woken, or receiving */
    __u64 thread_goid; /* goids[tid]: the goroutine runtime.execute last put on this thread */
    __u32 pid;
    __u32 tid;
    __u32 lost;        /* zt_wake records lost so far (all CPUs): a change means a gap */
    __u8 type;         /* ZT_EV_WAKE */
    __u8 kind;         /* ZT_WAKE_* */
    __u8 _pad[2];
};

/* Per Go process, offsets into the runtime's structs (from the binary's DWARF), map
 * go_runtime keyed by tgid. */
struct zt_go_runtime {
    __u32 goid;     /* runtime.g.goid */
    __u32 g_m;      /* runtime.g.m */
    __u32 m_g0;     /* runtime.m.g0 */
    __u32 m_curg;   /* runtime.m.curg */
    __u32 sudog_g;  /* runtime.sudog.g */
    __u32 hchan_elemsize; /* runtime.hchan.elemsize (uint16) */
};

#endif
